"""The API gateway: the proxy engine (``interlink.proxy``) configured from a YAML file.

``interlink gateway --config gateway.yaml`` (or ``python -m interlink.gateway``) serves it;
``--check`` validates the file and exits. See ``docs/gateway.md``.
"""

from interlink.gateway.app import Gateway, build_table, run
from interlink.gateway.config import ConfigError, GatewayConfig, load_config, parse_config

__all__ = [
    "ConfigError",
    "Gateway",
    "GatewayConfig",
    "build_table",
    "load_config",
    "parse_config",
    "run",
]
