"""lbt: the large-batch training lab."""

__version__ = "0.1.0"
