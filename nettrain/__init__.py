"""nettrain: train neural networks from Hydra config files."""

__version__ = "0.1.0"
