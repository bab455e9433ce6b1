"""prep: offline, deterministic, crash-safe preprocessing of training data."""

__version__ = "0.1.0"
