"""hoop: credential broker, local tunnel and identity-aware audit gateway."""

__version__ = "0.1.0"
