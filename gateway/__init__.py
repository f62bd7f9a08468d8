"""Event gateway: Redis pub/sub fanned out to Server-Sent Events, per merchant."""

__version__ = "0.1.0"
__all__ = ["__version__"]
