"""The package version, in one place: read by ``__init__``, telemetry and the build."""

__version__ = "0.2.0"
