"""The gateway's configuration: a YAML file, validated by pydantic, errors with file and line.

``load_config(path)`` parses and validates; every problem is reported as
``gateway.yaml:12: routes.0.retry.retries: Input should be greater than or equal to 0`` — the
file, the line the field is on, the field's path and what is wrong — all problems at once.
Unknown keys are errors too: a misspelt option silently ignored is how a gateway ends up
without the limit everyone thinks it has. See ``docs/gateway.md`` for every key.

A value may name environment variables: ``listen: "127.0.0.1:${GATEWAY_PORT}"``, or
``${NAME:-default}`` for a default when the variable is unset or empty (``$${`` writes a literal
``${``). They are read when the file is loaded (and again on each reload); an unset variable
without a default is an error at its line, like any other.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from interlink.errors import InterlinkError

__all__ = [
    "AuthConfig",
    "ConfigError",
    "GatewayConfig",
    "RouteConfig",
    "load_config",
    "parse_config",
]


class ConfigError(InterlinkError, ValueError):
    """The configuration is not valid; the message lists every problem with file and line."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitsConfig(_Model):
    """Client-connection limits (bytes, seconds)."""

    max_header_bytes: int = Field(default=16 * 1024, ge=256)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    head_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=30.0, gt=0)
    keepalive_timeout: float = Field(default=60.0, gt=0)


class PoolConfig(_Model):
    """Upstream connection pool, per upstream address."""

    max_connections: int = Field(default=256, ge=1)
    max_idle: int = Field(default=64, ge=1)
    idle_timeout: float = Field(default=15.0, gt=0)
    connect_timeout: float = Field(default=2.0, gt=0)
    pool_timeout: float = Field(default=1.0, gt=0)


class JwtKeyConfig(_Model):
    """One JWT verification key; secrets and keys may come from the environment or a file."""

    algorithm: Literal["HS256", "RS256", "ES256"]
    kid: str | None = None
    secret: str | None = None
    secret_env: str | None = None
    public_key: str | None = None
    public_key_file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> JwtKeyConfig:
        if self.algorithm == "HS256":
            if (self.secret is None) == (self.secret_env is None):
                raise ValueError("an HS256 key takes exactly one of 'secret' or 'secret_env'")
            if self.public_key or self.public_key_file:
                raise ValueError("an HS256 key takes no public key")
        else:
            if (self.public_key is None) == (self.public_key_file is None):
                raise ValueError(
                    f"an {self.algorithm} key takes exactly one of 'public_key' or "
                    "'public_key_file'"
                )
            if self.secret or self.secret_env:
                raise ValueError(f"an {self.algorithm} key takes no secret")
        return self

    def resolved_secret(self) -> str | None:
        """The HS256 secret, read from the environment when configured so."""
        if self.secret_env is not None:
            value = os.environ.get(self.secret_env)
            if not value:
                raise ValueError(f"the environment variable {self.secret_env!r} is not set")
            return value
        return self.secret

    def resolved_public_key(self) -> str | None:
        """The PEM public key, read from its file when configured so."""
        if self.public_key_file is not None:
            return Path(self.public_key_file).read_text()
        return self.public_key


class ApiKeyConfig(_Model):
    """An API key, stored as the SHA-256 hex digest of the key."""

    consumer: str = Field(min_length=1)
    key_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    scopes: list[str] = []


class AuthConfig(_Model):
    """Credentials the gateway accepts."""

    issuer: str | None = None
    audience: str | None = None
    leeway: float = Field(default=30.0, ge=0)
    jwt_keys: list[JwtKeyConfig] = []
    jwks_url: str | None = None
    jwks_ttl: float = Field(default=300.0, gt=0)
    api_keys: list[ApiKeyConfig] = []
    api_key_header: str = "x-api-key"
    identity_prefix: str = Field(default="x-auth-", pattern=r"^x-[a-z0-9-]+-$")
    token_cache_size: int = Field(default=10_000, ge=0)


class CorsConfig(_Model):
    """Cross-origin rules for routes with ``cors: true``."""

    allow_origins: list[str] = []
    allow_methods: list[str] = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    allow_headers: list[str] = ["authorization", "content-type", "x-api-key", "x-request-id"]
    expose_headers: list[str] = ["x-request-id", "traceparent", "retry-after"]
    allow_credentials: bool = False
    max_age: int = Field(default=600, ge=0)


class MatchConfig(_Model):
    """What a route matches."""

    path: str = Field(pattern=r"^/")
    methods: list[str] = []
    hosts: list[str] = []
    headers: dict[str, str] = {}

    @field_validator("methods")
    @classmethod
    def _upper(cls, methods: list[str]) -> list[str]:
        return [m.upper() for m in methods]


class BudgetConfig(_Model):
    """A retry budget: retries may add at most ``ratio`` of the route's calls."""

    ratio: float = Field(default=0.2, ge=0)
    min_per_second: float = Field(default=10.0, ge=0)
    ttl: float = Field(default=10.0, gt=0)


class RetryConfig(_Model):
    """Retries of failed attempts (the same words as ``interlink.Retry``)."""

    retries: int = Field(default=2, ge=0, le=10)
    backoff: float = Field(default=0.05, ge=0)
    max_backoff: float = Field(default=1.0, ge=0)
    multiplier: float = Field(default=2.0, ge=1)
    jitter: Literal["full", "equal", "decorrelated", "none"] = "full"
    budget: BudgetConfig | None = BudgetConfig()

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        if self.max_backoff < self.backoff:
            raise ValueError("'max_backoff' must be >= 'backoff'")
        return self


class BreakerConfig(_Model):
    """A circuit breaker over the route's upstream (see ``interlink.CircuitBreaker``)."""

    failure_rate_threshold: float = Field(default=0.5, gt=0, le=1)
    minimum_calls: int = Field(default=20, ge=1)
    window: float = Field(default=10.0, gt=0)
    cooldown: float = Field(default=5.0, gt=0)
    half_open_calls: int = Field(default=3, ge=1)


class BulkheadConfig(_Model):
    """At most ``max_concurrent`` requests to the upstream at once."""

    max_concurrent: int = Field(ge=1)
    max_queue: int = Field(default=0, ge=0)
    queue_timeout: float = Field(default=0.0, ge=0)


class RateLimitConfig(_Model):
    """A token bucket: ``rate`` requests per second, bursts of ``burst``, per key."""

    name: str = "default"
    rate: float = Field(gt=0)
    burst: int | None = Field(default=None, ge=1)
    per: Literal["consumer", "route", "ip"] = "consumer"
    on_store_down: Literal["local", "open", "closed"] = "local"


class RouteAuthConfig(_Model):
    """What a route requires of its callers."""

    methods: list[Literal["jwt", "api_key"]] = ["jwt", "api_key"]
    scopes: list[str] = []
    claims: dict[str, Any] = {}


class GrpcConfig(_Model):
    """Translate this route's JSON requests to one gRPC unary method."""

    target: str = Field(min_length=1)
    method: str = Field(pattern=r"^[A-Za-z_][\w.]*/[A-Za-z_]\w*$")
    descriptors: str = "reflection"
    timeout: float = Field(default=5.0, gt=0)


class TracingConfig(_Model):
    """Record a span per request with the OpenTelemetry SDK (``interlink.tracing.setup``)."""

    service_name: str = Field(default="gateway", min_length=1)
    exporter: str | None = None
    sample_ratio: float = Field(default=1.0, ge=0, le=1)


class RouteConfig(_Model):
    """One route."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    match: MatchConfig
    upstream: str | list[str] | None = None
    grpc: GrpcConfig | None = None
    rewrite: str | None = Field(default=None, pattern=r"^/")
    preserve_host: bool = False
    timeout: float | None = Field(default=30.0, gt=0)
    retry: RetryConfig | None = None
    breaker: BreakerConfig | None = None
    bulkhead: BulkheadConfig | None = None
    auth: RouteAuthConfig | None = None
    rate_limits: list[RateLimitConfig] = []
    cors: bool = False

    @model_validator(mode="after")
    def _one_destination(self) -> RouteConfig:
        if (self.upstream is None) == (self.grpc is None):
            raise ValueError("a route takes exactly one of 'upstream' or 'grpc'")
        upstreams = [self.upstream] if isinstance(self.upstream, str) else self.upstream or []
        for url in upstreams:
            if url.startswith("service://"):
                if len(upstreams) > 1:
                    raise ValueError("'service://' names the only upstream of a route")
            elif not url.startswith("http://"):
                raise ValueError(f"an upstream is service://name or http://host:port: {url!r}")
        return self


class GatewayConfig(_Model):
    """The whole gateway."""

    listen: str = Field(default="127.0.0.1:8080", pattern=r"^.+:\d+$")
    admin: str | None = Field(default="127.0.0.1:9901", pattern=r"^.+:\d+$")
    workers: int = Field(default=1, ge=1, le=64)
    discovery: str | None = None
    rate_limit_store: str = "memory"
    rate_limit_timeout: float = Field(default=0.25, gt=0, le=10)
    limits: LimitsConfig = LimitsConfig()
    upstream_pool: PoolConfig = PoolConfig()
    auth: AuthConfig | None = None
    cors: CorsConfig = CorsConfig()
    tracing: TracingConfig | None = None
    gc_freeze: bool = True
    routes: list[RouteConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> GatewayConfig:
        counts = Counter(r.name for r in self.routes)
        duplicates = sorted(n for n, c in counts.items() if c > 1)
        if duplicates:
            raise ValueError(f"route names must be unique: {duplicates}")
        if self.auth is None and any(r.auth is not None for r in self.routes):
            raise ValueError("routes require auth but there is no 'auth' section")
        uses_discovery = any(
            isinstance(r.upstream, str) and r.upstream.startswith("service://") for r in self.routes
        )
        if uses_discovery and self.discovery is None:
            raise ValueError("routes use service:// upstreams but 'discovery' is not set")
        if not (self.rate_limit_store == "memory" or self.rate_limit_store.startswith("redis")):
            raise ValueError("'rate_limit_store' must be 'memory' or a redis:// URL")
        return self


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int:
    """The line (1-based) of the YAML node at ``loc``, or of its deepest existing parent."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if k.value == part), None)
            if found is None:
                break
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
        else:
            break
        assert node is not None
        line = node.start_mark.line + 1
    return line


#: ``${NAME}``, ``${NAME:-default}``, and ``$${`` for a literal ``${``.
_VARIABLE = re.compile(r"\$(\$)\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, loc: tuple[int | str, ...], unset: list[tuple[Any, str]]) -> Any:
    """``value`` with the environment variables in its strings filled in; each unset variable
    without a default is added to ``unset`` with where it is."""
    if isinstance(value, str):
        if "${" not in value:
            return value

        def fill(match: re.Match[str]) -> str:
            if match.group(1):
                return "${"
            name, default = match.group(2), match.group(3)
            found = os.environ.get(name)
            if default is not None and not found:
                return default
            if found is None:
                unset.append((loc, name))
                return ""
            return found

        return _VARIABLE.sub(fill, value)
    if isinstance(value, dict):
        return {k: _expand(v, (*loc, k), unset) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*loc, i), unset) for i, v in enumerate(value)]
    return value


def parse_config(text: str, source: str = "<config>") -> GatewayConfig:
    """Validate the YAML ``text``; ``ConfigError`` names ``source``, line and field."""
    # libyaml when present: a 5,000-route file parses in a fraction of the pure-Python time
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()  # composed once: the lines, then the data from it
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{source}:{line}: not valid YAML: {problem}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the configuration must be a mapping of keys")
    unset: list[tuple[Any, str]] = []
    data = _expand(data, (), unset)
    if unset:
        raise ConfigError(
            "\n".join(
                f"{source}:{_line_of(node, loc)}: {'.'.join(str(p) for p in loc)}: the "
                f"environment variable {name!r} is not set (write ${{{name}:-default}} for a "
                "default)"
                for loc, name in unset
            )
        )
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            loc = tuple(p for p in item["loc"] if not str(p).startswith("function-after"))
            field = ".".join(str(p) for p in loc) or "(top level)"
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{source}:{_line_of(node, loc)}: {field}: {message}")
        raise ConfigError("\n".join(problems)) from None


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate the configuration file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read: {error.strerror}") from None
    return parse_config(text, str(path))
