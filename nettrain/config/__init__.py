"""What a user can choose and how it is checked: the registry of models, data and losses, the config rules,
paths, user code named by `_target_`, overrides, did-you-mean and the configs' resolvers. Imports no torch."""
