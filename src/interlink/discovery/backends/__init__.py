"""Registry backends, one module each, imported by ``interlink.discovery.from_url`` on demand."""
