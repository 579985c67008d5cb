"""Who is calling: JWT bearer tokens and API keys, checked before a request goes upstream.

JWTs (``Authorization: Bearer ...``) are verified with PyJWT against keys that each carry one
algorithm (HS256, RS256 or ES256): a token is checked only with keys of the algorithm its header
names, so ``alg: none`` never verifies and an RS256 public key can never be misused as an HS256
secret (algorithm confusion). Keys come inline or from a JWKS URL, fetched off the event loop,
cached for ``jwks_ttl`` seconds and re-fetched early (at most every ``jwks_min_refresh``) when a
token names a key id we do not know: keys rotate. ``exp``, ``nbf``, ``iss`` and ``aud`` are
checked with ``leeway`` seconds of clock skew allowed.

A verified token is cached (bounded, until it expires): an RS256 signature check costs about
100 µs, a dictionary hit well under one.

API keys are stored as SHA-256 hashes, never in clear: the configuration can be read without
leaking a key. The identity (subject, consumer, scopes, method) reaches the upstream in headers
under one prefix (default ``x-auth-``); the engine strips every incoming header with that prefix,
so a client cannot forge its identity.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from interlink.proxy.errors import ProxyError

__all__ = [
    "ALGORITHMS",
    "ApiKey",
    "Authenticator",
    "Identity",
    "JwtKey",
    "Requirement",
    "hash_api_key",
]

#: The JWT algorithms accepted, each bound to its key type.
ALGORITHMS = ("HS256", "RS256", "ES256")
_CHALLENGE = (("www-authenticate", 'Bearer realm="interlink"'),)
#: the types of a numeric claim (a tuple: ``int | float`` would build a union on every use)
_NUMBER = (int, float)


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest stored in configuration for API key ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtKey:
    """A verification key: ``secret`` for HS256, a PEM public key for RS256/ES256."""

    algorithm: str
    secret: str | None = None
    public_key: str | None = None
    kid: str | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"'algorithm' must be one of {list(ALGORITHMS)}: {self.algorithm!r}")
        if self.algorithm == "HS256":
            if not self.secret or self.public_key:
                raise ValueError("an HS256 key takes a 'secret' (and no 'public_key')")
            if len(self.secret.encode()) < 32:
                raise ValueError("an HS256 'secret' must be at least 32 bytes")
        elif not self.public_key or self.secret:
            raise ValueError(f"an {self.algorithm} key takes a 'public_key' (and no 'secret')")


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    """An API key by its SHA-256 hash, the consumer it names and the scopes it grants."""

    consumer: str
    key_sha256: str
    scopes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        digest = self.key_sha256.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"'key_sha256' must be 64 hex digits (consumer {self.consumer!r})")


@dataclass(frozen=True, slots=True, kw_only=True)
class Requirement:
    """What a route demands: one of ``methods`` (``jwt``, ``api_key``), every scope in
    ``scopes``, and every claim in ``claims`` with exactly that value."""

    methods: tuple[str, ...] = ("jwt", "api_key")
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.methods) - {"jwt", "api_key"}
        if unknown or not self.methods:
            raise ValueError(f"'methods' must be a non-empty list of jwt, api_key: {self.methods}")


@dataclass(frozen=True, slots=True)
class Identity:
    """The authenticated caller."""

    method: str
    subject: str
    scopes: frozenset[str]
    claims: Mapping[str, Any]
    _lines: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def headers(self, prefix: str) -> list[tuple[str, str]]:
        """The headers that carry this identity upstream."""
        return [
            (prefix + "method", self.method),
            (prefix + "subject", self.subject),
            (prefix + "scopes", " ".join(sorted(self.scopes))),
        ]

    def header_lines(self, prefix: str) -> str:
        """``headers`` as ``name: value\\r\\n`` lines, rendered once per prefix: a cached
        token's identity serves every request that presents it."""
        lines = self._lines.get(prefix)
        if lines is None:
            lines = self._lines[prefix] = "".join(
                f"{name}: {value}\r\n" for name, value in self.headers(prefix)
            )
        return lines


class _Jwks:
    """Keys fetched from a JWKS URL, cached and refreshed."""

    def __init__(self, url: str, ttl: float, min_refresh: float, clock: Callable[[], float]):
        self.url = url
        self.ttl = ttl
        self.min_refresh = min_refresh
        self.clock = clock
        self.keys: dict[str | None, list[tuple[str, Any]]] = {}
        self.fetched = -1e18
        self._fetching: asyncio.Task[None] | None = None

    async def get(self, kid: str | None, algorithm: str) -> list[Any]:
        now = self.clock()
        stale = now - self.fetched > self.ttl
        unknown = kid not in self.keys and now - self.fetched > self.min_refresh
        if stale or unknown:
            try:
                await self._refresh()
            except (OSError, ValueError):
                if not self.keys:
                    raise ProxyError("auth_invalid", "the signing keys are unavailable") from None
        found = (
            self.keys.get(kid, [])
            if kid is not None
            else [k for keys in self.keys.values() for k in keys]
        )
        return [key for alg, key in found if alg == algorithm]

    async def _refresh(self) -> None:
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._fetch())
        try:
            await asyncio.shield(self._fetching)
        finally:
            self._fetching = None

    async def _fetch(self) -> None:
        import jwt

        raw = await asyncio.to_thread(_download, self.url)
        keys: dict[str | None, list[tuple[str, Any]]] = {}
        for entry in json.loads(raw).get("keys", []):
            algorithm = entry.get("alg") or {"RSA": "RS256", "EC": "ES256"}.get(entry.get("kty"))
            if algorithm not in ("RS256", "ES256"):
                continue  # symmetric keys have no place in a published key set
            try:
                key = jwt.PyJWK.from_dict(entry, algorithm=algorithm).key
            except jwt.PyJWTError:
                continue
            keys.setdefault(entry.get("kid"), []).append((algorithm, key))
        self.keys = keys
        self.fetched = self.clock()


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        data: bytes = response.read(1 << 20)
        return data


class Authenticator:
    """Checks credentials against a route's ``Requirement`` (see the module docstring)."""

    def __init__(
        self,
        *,
        keys: Sequence[JwtKey] = (),
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 30.0,
        api_keys: Iterable[ApiKey] = (),
        api_key_header: str = "x-api-key",
        identity_prefix: str = "x-auth-",
        cache_size: int = 10_000,
        jwks_ttl: float = 300.0,
        jwks_min_refresh: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = tuple(keys)
        self._jwks = (
            _Jwks(jwks_url, jwks_ttl, jwks_min_refresh, time.monotonic) if jwks_url else None
        )
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self._api_keys = {k.key_sha256.lower(): k for k in api_keys}
        self.api_key_header = api_key_header.lower()
        self.identity_prefix = identity_prefix.lower()
        self._cache: OrderedDict[str, tuple[Identity, float]] = OrderedDict()
        #: entries of ``_cache`` by the whole ``Authorization`` header that presented them
        self._by_header: dict[str, tuple[Identity, float]] = {}
        self._cache_size = cache_size
        self._clock = clock

    async def authenticate(
        self, requirement: Requirement, authorization: str | None, api_key: str | None
    ) -> Identity:
        """The caller's identity, or ``ProxyError`` 401 (no or bad credentials) / 403 (valid
        credentials without what the route requires)."""
        identity: Identity | None = None
        if "jwt" in requirement.methods and authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                identity = await self.verify_jwt(token.strip())
        if identity is None and "api_key" in requirement.methods and api_key is not None:
            identity = self.verify_api_key(api_key)
        if identity is None:
            raise ProxyError("auth_missing", "credentials are required", headers=_CHALLENGE)
        missing = requirement.scopes - identity.scopes
        if missing:
            raise ProxyError("forbidden", f"missing scopes: {' '.join(sorted(missing))}")
        for name, value in requirement.claims.items():
            if identity.claims.get(name) != value:
                raise ProxyError("forbidden", f"the claim {name!r} does not allow this route")
        return identity

    def authenticate_now(
        self, requirement: Requirement, authorization: str | None, api_key: str | None
    ) -> Identity | None:
        """``authenticate`` when it can say yes without waiting (a token in the cache of
        verified tokens, or an API key) and the route's scopes and claims are there; None
        for everything else, which ``authenticate`` then decides (verifies, or refuses)."""
        identity: Identity | None = None
        if authorization is not None and "jwt" in requirement.methods:
            # the cache of verified tokens, while the token is still valid: found by the
            # whole header first (a client repeats it, and the same string keeps its hash)
            cached = self._by_header.get(authorization)
            if cached is None:
                scheme, _, token = authorization.partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    cached = self._cache.get(token.strip())
                    if cached is None:
                        return None
                    if len(self._by_header) >= self._cache_size:
                        self._by_header.clear()
                    self._by_header[authorization] = cached
            if cached is not None:
                identity, expires = cached
                now = self._clock()
                if now > expires + self.leeway:
                    return None
                nbf = identity.claims.get("nbf")
                if isinstance(nbf, _NUMBER) and nbf - self.leeway > now:
                    return None
        if identity is None and "api_key" in requirement.methods and api_key is not None:
            found = self._api_keys.get(hash_api_key(api_key))
            if found is None:
                return None
            identity = Identity("api_key", found.consumer, found.scopes, {})
        if identity is None or not requirement.scopes <= identity.scopes:
            return None
        for name, value in requirement.claims.items():
            if identity.claims.get(name) != value:
                return None
        return identity

    def verify_api_key(self, key: str) -> Identity:
        """The identity of API key ``key``, or ``ProxyError('auth_invalid')``."""
        found = self._api_keys.get(hash_api_key(key))
        if found is None:
            raise ProxyError("auth_invalid", "the API key is not valid", headers=_CHALLENGE)
        return Identity("api_key", found.consumer, found.scopes, {})

    async def verify_jwt(self, token: str) -> Identity:
        """The identity of a JWT, verified (or found in the cache of verified tokens)."""
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None:
            identity, expires = cached
            if now <= expires + self.leeway:
                nbf = identity.claims.get("nbf")
                if not isinstance(nbf, _NUMBER) or nbf - self.leeway <= now:
                    return identity
            else:
                del self._cache[token]
                raise ProxyError("auth_expired", "the token has expired", headers=_CHALLENGE)
        identity = await self._verify(token)
        exp = identity.claims.get("exp")
        if isinstance(exp, _NUMBER):
            self._cache[token] = (identity, float(exp))
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return identity

    async def _verify(self, token: str) -> Identity:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise ProxyError("auth_invalid", "the token is malformed", headers=_CHALLENGE) from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise ProxyError(
                "auth_invalid", "the token's algorithm is not accepted", headers=_CHALLENGE
            )
        kid = header.get("kid")
        candidates: list[Any] = [
            k.secret if k.algorithm == "HS256" else k.public_key
            for k in self._keys
            if k.algorithm == algorithm and (kid is None or k.kid is None or k.kid == kid)
        ]
        if self._jwks is not None and algorithm != "HS256":
            candidates += await self._jwks.get(kid, algorithm)
        if not candidates:
            raise ProxyError("auth_invalid", "no key verifies this token", headers=_CHALLENGE)
        options = {"require": ["exp"], "verify_aud": self.audience is not None}
        last: Exception | None = None
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key=key,
                    algorithms=[algorithm],
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway,
                    options=options,  # type: ignore[arg-type]
                )
            except jwt.ExpiredSignatureError:
                raise ProxyError(
                    "auth_expired", "the token has expired", headers=_CHALLENGE
                ) from None
            except jwt.ImmatureSignatureError:
                raise ProxyError(
                    "auth_not_yet_valid", "the token is not valid yet", headers=_CHALLENGE
                ) from None
            except jwt.InvalidSignatureError as error:
                last = error
                continue
            except jwt.PyJWTError:
                raise ProxyError(
                    "auth_invalid", "the token's claims are not accepted", headers=_CHALLENGE
                ) from None
            scopes = claims.get("scope", claims.get("scopes", ""))
            scope_set = frozenset(scopes.split() if isinstance(scopes, str) else map(str, scopes))
            return Identity("jwt", str(claims.get("sub", "")), scope_set, claims)
        del last
        raise ProxyError("auth_invalid", "the token's signature is not valid", headers=_CHALLENGE)
