"""The package version, in a module of its own so that low layers can stamp it without importing torchslim."""
__version__ = "0.1.0"
