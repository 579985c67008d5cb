"""interlink: resilient service-to-service communication."""

from interlink._version import __version__

__all__ = ["__version__"]
