"""The package version (one place; ``__init__`` and telemetry read it)."""

__version__ = "0.1.0"
