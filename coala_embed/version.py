"""The package version (read by hatch at build time, and by the modules that record it in their outputs)."""

__version__ = "0.1.0"
