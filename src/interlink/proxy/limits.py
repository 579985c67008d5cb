"""Rate limits per consumer and per route: token buckets, in memory or shared through Redis.

A ``LimitRule`` says how many requests per second (``rate``) in bursts of up to ``burst`` one
key may make; the key is the route alone (``per="route"``), the authenticated consumer
(``"consumer"``: API-key consumer or JWT subject, else the client address) or the client
address (``"ip"``). Every decision answers the IETF ``RateLimit-*`` headers; a refusal is 429
``rate_limited`` with ``Retry-After``.

``MemoryBuckets`` keeps the buckets of one process. ``RedisBuckets`` keeps them in Redis for a
fleet of gateways that share limits: one Lua script per decision reads, refills and takes
atomically, on Redis's own clock (``TIME``), so two gateways can never both take the last token
and their clocks never need to agree. When Redis cannot answer, the rule's ``on_store_down``
decides: ``"local"`` (default) decides on this process's own buckets, ``"open"`` lets the
request through, ``"closed"`` refuses it with 503 ``rate_limit_unavailable``.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from interlink.proxy.errors import ProxyError

__all__ = ["Decision", "LimitRule", "Limiter", "MemoryBuckets", "RedisBuckets"]

Per = Literal["route", "consumer", "ip"]
StoreDown = Literal["local", "open", "closed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitRule:
    """``rate`` requests per second per key, in bursts of up to ``burst``."""

    name: str
    rate: float
    burst: int
    per: Per = "consumer"
    on_store_down: StoreDown = "local"
    #: ``("ratelimit-limit", str(burst))``, made once: every allowed request answers it
    limit_header: tuple[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "limit_header", ("ratelimit-limit", str(self.burst)))
        if not (isinstance(self.rate, int | float) and self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(
                f"'rate' must be a positive number of requests per second: {self.rate!r}"
            )
        if not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"'burst' must be a positive integer: {self.burst!r}")
        if self.per not in ("route", "consumer", "ip"):
            raise ValueError(f"'per' must be 'route', 'consumer' or 'ip': {self.per!r}")
        if self.on_store_down not in ("local", "open", "closed"):
            raise ValueError(
                f"'on_store_down' must be 'local', 'open' or 'closed': {self.on_store_down!r}"
            )


class Decision(NamedTuple):
    """One decision: allowed or not, tokens left, and seconds until one more token (a named
    tuple: one is made per request, and a tuple is the cheapest immutable record)."""

    allowed: bool
    remaining: int
    retry_after: float

    def headers(self, rule: LimitRule) -> list[tuple[str, str]]:
        """``RateLimit-Limit``/``-Remaining``/``-Reset`` (and ``Retry-After`` on a refusal)."""
        if self.allowed:  # the usual answer: two of the three pairs are the rule's constants
            remaining = self.remaining
            return [
                rule.limit_header,
                ("ratelimit-remaining", str(remaining) if remaining > 0 else "0"),
                _RESET_NOW,
            ]
        reset = math.ceil(self.retry_after)
        return [
            rule.limit_header,
            ("ratelimit-remaining", str(max(0, self.remaining))),
            ("ratelimit-reset", str(reset)),
            ("retry-after", str(max(1, reset))),
        ]


_RESET_NOW = ("ratelimit-reset", "0")


class Buckets(Protocol):
    """Where token buckets live."""

    async def take(self, key: str, rule: LimitRule) -> Decision:
        """Take one token from ``key``'s bucket under ``rule``."""
        ...


class MemoryBuckets:
    """Token buckets of this process (bounded: least recently used keys are forgotten)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def take_now(self, key: str, rule: LimitRule) -> Decision:
        """``take`` without awaiting: memory never waits."""
        now = self._clock()
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = [float(rule.burst), now]
            if len(buckets) > self._max_keys:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
            elapsed = now - bucket[1]
            if elapsed > 0:
                tokens = bucket[0] + elapsed * rule.rate
                bucket[0] = tokens if tokens < rule.burst else float(rule.burst)
            bucket[1] = now
        tokens = bucket[0]
        if tokens >= 1.0:
            tokens -= 1.0
            bucket[0] = tokens
            # ``Decision(True, ...)`` made by the tuple type itself: a named tuple's own
            # constructor is Python code, and one decision is made per request
            return tuple.__new__(Decision, (True, int(tokens), 0.0))
        return Decision(False, 0, (1.0 - tokens) / rule.rate)

    async def take(self, key: str, rule: LimitRule) -> Decision:
        """Take one token from ``key``'s bucket."""
        return self.take_now(key, rule)


# KEYS[1] bucket; ARGV rate, burst. Returns {allowed, tokens left (string: Lua numbers would be
# truncated to integers on the way out)}.
_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
local elapsed = now - ts
if elapsed > 0 then
  tokens = math.min(burst, tokens + elapsed * rate)
end
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


class RedisBuckets:
    """Token buckets in Redis, shared by every gateway using the same ``url`` and ``prefix``;
    ``fallback`` decides while Redis is unreachable (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "interlink:ratelimit:",
        timeout: float = 0.25,
        fallback: MemoryBuckets | None = None,
    ) -> None:
        try:
            import redis.asyncio as redis_asyncio
            from redis.asyncio.retry import Retry as RedisRetry
            from redis.backoff import NoBackoff
        except ImportError as error:  # pragma: no cover - the gateway extra installs it
            raise ImportError(
                "shared rate limits need redis: pip install 'interlink[redis]'"
            ) from error
        # No client-side retries: a decision that timed out may already have taken its token
        # on the server, so sending it again could take a second one (redis-py retries timeouts
        # by default, up to 10 times), and ``timeout`` must bound the whole decision.
        self._client: Any = redis_asyncio.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=RedisRetry(NoBackoff(), 0),
        )
        self._script = self._client.register_script(_SCRIPT)
        self.prefix = prefix
        self.fallback = fallback or MemoryBuckets()
        self.failures = 0

    async def take(self, key: str, rule: LimitRule) -> Decision:
        """Take one token from ``key``'s shared bucket; Redis down: ``rule.on_store_down``."""
        try:
            allowed, tokens = await self._script(
                keys=[self.prefix + key], args=[repr(rule.rate), rule.burst]
            )
        except Exception:
            self.failures += 1
            if rule.on_store_down == "open":
                return Decision(True, rule.burst, 0.0)
            if rule.on_store_down == "closed":
                raise ProxyError(
                    "rate_limit_unavailable", "the rate-limit store is unavailable"
                ) from None
            return self.fallback.take_now(key, rule)
        left = float(tokens)
        if allowed:
            return Decision(True, int(left), 0.0)
        return Decision(False, 0, (1.0 - left) / rule.rate)

    async def aclose(self) -> None:
        """Close the Redis connections."""
        await self._client.aclose()


class Limiter:
    """Applies a route's rules; counts refusals per rule for metrics."""

    def __init__(self, buckets: Buckets) -> None:
        self.buckets = buckets
        self.rejected: dict[str, int] = {}
        #: whether ``check_now`` can decide (buckets in memory never wait)
        self.decides_now = isinstance(buckets, MemoryBuckets)

    async def check(
        self, rules: tuple[LimitRule, ...], route: str, consumer: str | None, client: str
    ) -> list[tuple[str, str]]:
        """The ``RateLimit-*`` headers for the tightest rule, or ``ProxyError('rate_limited')``
        (rules after a refusing one are not charged)."""
        tightest: tuple[LimitRule, Decision] | None = None
        for rule in rules:
            decision = await self.buckets.take(_key(rule, route, consumer, client), rule)
            tightest = self._judge(rule, decision, route, tightest)
        return [] if tightest is None else tightest[1].headers(tightest[0])

    def check_now(
        self, rules: tuple[LimitRule, ...], route: str, consumer: str | None, client: str
    ) -> list[tuple[str, str]]:
        """``check`` without awaiting, for in-memory buckets (``decides_now``)."""
        buckets = self.buckets
        assert isinstance(buckets, MemoryBuckets)
        tightest: tuple[LimitRule, Decision] | None = None
        for rule in rules:
            decision = buckets.take_now(_key(rule, route, consumer, client), rule)
            if tightest is None and decision.allowed:  # ``_judge``'s answer, without a call
                tightest = (rule, decision)
            else:
                tightest = self._judge(rule, decision, route, tightest)
        return [] if tightest is None else tightest[1].headers(tightest[0])

    def _judge(
        self,
        rule: LimitRule,
        decision: Decision,
        route: str,
        tightest: tuple[LimitRule, Decision] | None,
    ) -> tuple[LimitRule, Decision]:
        """Raise the refusal, or return the tighter of ``tightest`` and this decision."""
        if not decision.allowed:
            raise self._refused(rule, decision, route)
        if tightest is None or decision.remaining < tightest[1].remaining:
            return rule, decision
        return tightest

    def _refused(self, rule: LimitRule, decision: Decision, route: str) -> ProxyError:
        self.rejected[route] = self.rejected.get(route, 0) + 1
        return ProxyError(
            "rate_limited",
            f"rate limit {rule.name!r} reached: {rule.rate:g}/s, burst {rule.burst}",
            headers=tuple(decision.headers(rule)),
        )


def _key(rule: LimitRule, route: str, consumer: str | None, client: str) -> str:
    """The bucket of ``rule`` for this request."""
    if rule.per == "route":
        return f"{route}:{rule.name}"
    if rule.per == "ip" or consumer is None:
        return f"{route}:{rule.name}:ip:{client}"
    return f"{route}:{rule.name}:c:{consumer}"
