"""Data: one builder per source (registered in config.registry.DATA), each returning loaders and the
`DataSpec` a model is built from (data.base). To add a source, see config/registry.py."""
