"""The installed version; read by ``interlink --version`` and the build backend."""

__version__ = "0.1.0"
