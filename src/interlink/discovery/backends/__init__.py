"""Registry backends, one module each, imported by ``Registry.from_url`` on demand."""
