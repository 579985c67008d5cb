"""Broker backends, one module each, chosen by URL scheme (see ``interlink.messaging.backend``)."""
