"""Which route a request takes: host, path (prefix or template), method and headers.

Routes are tried in the order they were given; the first whose host, path and headers match
wins. A request whose path matches routes that allow none of its methods gets 405 (with
``Allow``), one that matches nothing 404. Matching is indexed by the first path segment, so a
table of thousands of routes costs a dictionary look-up plus the few candidates that share it.

The path is normalised first (``normalise_path``): dot segments resolved, repeated slashes
folded, percent-escapes of unreserved characters decoded; an encoded slash, backslash or NUL, or
a ``..`` that climbs above the root, is refused with 400 rather than guessed at, so a route can
never be bypassed by spelling its path differently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

from interlink.proxy.errors import ProxyError

__all__ = ["Match", "Route", "Router", "normalise_path"]

T = TypeVar("T")

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_REFUSED_ESCAPES = frozenset({"2f", "5c", "00"})  # '/', '\\', NUL
_CACHE_SIZE = 4096


def normalise_path(raw: str) -> str:
    """``raw`` (no query) in canonical form; raises ``ProxyError('invalid_path')`` when it
    cannot be made canonical without changing what it names."""
    if not raw.startswith("/"):
        if raw == "*":
            raise ProxyError("invalid_path", "the path '*' is not routable")
        raise ProxyError("invalid_path", "the path must start with '/'")
    if "\\" in raw or "\x00" in raw:
        raise ProxyError("invalid_path", "the path holds a backslash or a NUL byte")
    if "%" in raw:
        raw = _decode_unreserved(raw)
    if "//" not in raw and "/." not in raw:
        return raw
    segments: list[str] = []
    for segment in raw.split("/")[1:]:
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                raise ProxyError("invalid_path", "the path climbs above the root")
            segments.pop()
            continue
        segments.append(segment)
    trailing = raw.endswith(("/", "/.", "/..")) and bool(segments)
    return "/" + "/".join(segments) + ("/" if trailing else "")


def _decode_unreserved(raw: str) -> str:
    parts = raw.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        code = part[:2].lower()
        if len(code) < 2 or any(c not in "0123456789abcdef" for c in code):
            raise ProxyError("invalid_path", "the path holds a malformed percent-escape")
        if code in _REFUSED_ESCAPES:
            raise ProxyError("invalid_path", "the path holds an encoded slash, backslash or NUL")
        char = chr(int(code, 16))
        out.append((char if char in _UNRESERVED else "%" + code.upper()) + part[2:])
    return "".join(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Route(Generic[T]):
    """One route: what it matches and the ``target`` (anything) a match hands back.

    ``path`` is a prefix (``/api``: matches ``/api`` and ``/api/...``, whole segments only) or,
    when it holds ``{name}`` parts, a template matched whole (``/orders/{id}``). ``hosts``: exact
    names or ``*.example.com``; empty matches any. ``methods``: upper-case; empty matches any.
    ``headers``: every name (lower case) must be present with exactly this value. ``rewrite``:
    the upstream path: for a prefix route it replaces the prefix, for a template route it is a
    template over the same names.
    """

    name: str
    path: str
    target: T
    hosts: tuple[str, ...] = ()
    methods: frozenset[str] = frozenset()
    headers: Mapping[str, str] = field(default_factory=dict)
    rewrite: str | None = None

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"'path' must start with '/': {self.path!r}")
        if self.rewrite is not None and not self.rewrite.startswith("/"):
            raise ValueError(f"'rewrite' must start with '/': {self.rewrite!r}")
        names = _PARAM.findall(self.path)
        if len(set(names)) != len(names):
            raise ValueError(f"'path' names a parameter twice: {self.path!r}")
        if self.rewrite is not None:
            unknown = set(_PARAM.findall(self.rewrite)) - set(names)
            if unknown:
                raise ValueError(
                    f"'rewrite' uses parameters the path does not define: {sorted(unknown)}"
                )


class Match(NamedTuple, Generic[T]):
    """A matched route, its path parameters and the path to send upstream (query included).

    A named tuple, the cheapest immutable record; the router hands the same match to repeated
    requests, so ``params`` is shared: read it, never change it."""

    route: Route[T]
    params: dict[str, str]
    upstream_path: str


class _Compiled(Generic[T]):
    __slots__ = ("hosts", "index", "pattern", "prefix", "route", "wild_hosts")

    def __init__(self, route: Route[T], index: int) -> None:
        self.route = route
        self.index = index
        self.hosts = frozenset(h.lower() for h in route.hosts if not h.startswith("*."))
        self.wild_hosts = tuple(h[1:].lower() for h in route.hosts if h.startswith("*."))
        if _PARAM.search(route.path):
            self.prefix: str | None = None
            regex = "^" + _PARAM.sub(lambda m: f"(?P<{m.group(1)}>[^/]+)", _escape(route.path))
            self.pattern: re.Pattern[str] | None = re.compile(regex + "$")
        else:
            self.prefix = route.path.rstrip("/") or "/"
            self.pattern = None

    def host_ok(self, host: str) -> bool:
        if not self.hosts and not self.wild_hosts:
            return True
        return host in self.hosts or any(host.endswith(w) for w in self.wild_hosts)

    def path_params(self, path: str) -> dict[str, str] | None:
        if self.pattern is not None:
            found = self.pattern.match(path)
            return None if found is None else found.groupdict()
        prefix = self.prefix
        if prefix in ("/", path) or path.startswith(prefix + "/"):  # type: ignore[operator]
            return {}
        return None

    def headers_ok(self, headers: Sequence[tuple[str, str]]) -> bool:
        wanted = self.route.headers
        if not wanted:
            return True
        first: dict[str, str] = {}
        for name, value in headers:
            first.setdefault(name, value)
        return all(first.get(k) == v for k, v in wanted.items())

    def upstream_path(self, path: str, params: dict[str, str]) -> str:
        rewrite = self.route.rewrite
        if rewrite is None:
            return path
        if self.pattern is not None:
            return _PARAM.sub(lambda m: params[m.group(1)], rewrite)
        rest = path if self.prefix == "/" else path[len(self.prefix or "") :]
        if not rest:
            return rewrite
        return rewrite.rstrip("/") + rest if rest.startswith("/") else rewrite + rest


def _escape(template: str) -> str:
    pieces = _PARAM.split(template)
    return "".join(re.escape(p) if i % 2 == 0 else "{" + p + "}" for i, p in enumerate(pieces))


def _first_segment(path: str) -> str | None:
    """The first segment if it is literal, None when it is a parameter or the root."""
    segment = path[1:].split("/", 1)[0]
    if not segment or "{" in segment:
        return None
    return segment


class Router(Generic[T]):
    """An immutable routing table; build a new one to change it (reloads swap whole tables)."""

    __slots__ = ("_by_segment", "_cache", "_wild", "routes")

    def __init__(self, routes: Iterable[Route[T]]) -> None:
        self.routes: tuple[Route[T], ...] = tuple(routes)
        names = [r.name for r in self.routes]
        duplicate = (
            {n for n in names if names.count(n) > 1} if len(set(names)) != len(names) else ()
        )
        if duplicate:
            raise ValueError(f"route names must be unique: {sorted(duplicate)}")
        compiled = [_Compiled(r, i) for i, r in enumerate(self.routes)]
        wild = [c for c in compiled if _first_segment(c.route.path) is None]
        by_segment: dict[str, list[_Compiled[T]]] = {}
        for c in compiled:
            segment = _first_segment(c.route.path)
            if segment is not None:
                by_segment.setdefault(segment, []).append(c)
        self._wild: tuple[_Compiled[T], ...] = tuple(wild)
        self._by_segment: dict[str, tuple[_Compiled[T], ...]] = {
            s: tuple(sorted(cs + wild, key=lambda c: c.index)) for s, cs in by_segment.items()
        }
        #: matches already made, by (method, host, target): clients repeat their requests, and
        #: a hit costs one look-up instead of normalising and trying routes. Only when no route
        #: matches on headers (else the headers would be part of the answer).
        self._cache: dict[tuple[str, str, str], Match[T]] | None = (
            None if any(r.headers for r in self.routes) else {}
        )

    def match(
        self, method: str, host: str, target: str, headers: Sequence[tuple[str, str]]
    ) -> Match[T]:
        """The route for a request; ``target`` is the request line's path and query, ``headers``
        (lower-case name, value) pairs.

        Raises ``ProxyError``: ``invalid_path`` (400), ``no_route`` (404) or
        ``method_not_allowed`` (405, with ``Allow``).
        """
        cache = self._cache
        if cache is None:
            return self._match(method, host, target, headers)
        key = (method, host, target)
        found = cache.get(key)
        if found is None:
            found = self._match(method, host, target, headers)
            if len(cache) >= _CACHE_SIZE:
                cache.clear()  # many distinct targets (ids, queries): start again
            cache[key] = found
        return found

    def _match(
        self, method: str, host: str, target: str, headers: Sequence[tuple[str, str]]
    ) -> Match[T]:
        raw, sep, query = target.partition("?")
        path = normalise_path(raw)
        host = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else host.lower()
        segment = path[1:].split("/", 1)[0]
        candidates: Sequence[_Compiled[T]] = self._by_segment.get(segment, self._wild)
        allowed: set[str] = set()
        for c in candidates:
            if not c.host_ok(host):
                continue
            params = c.path_params(path)
            if params is None or not c.headers_ok(headers):
                continue
            methods = c.route.methods
            if methods and method not in methods:
                allowed |= methods
                continue
            upstream = c.upstream_path(path, params)
            return Match(c.route, params, upstream + sep + query)
        if allowed:
            allow = ", ".join(sorted(allowed))
            raise ProxyError(
                "method_not_allowed",
                f"{method} is not allowed here; allowed: {allow}",
                headers=(("allow", allow),),
            )
        raise ProxyError("no_route", "no route matches this request")
