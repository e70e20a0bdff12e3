"""The package version (its own module, so lower layers can read it without importing rspo)."""

__version__ = "0.1.0"
