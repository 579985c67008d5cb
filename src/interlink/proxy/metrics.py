"""The proxy's own counters, rendered in the Prometheus text format for the admin port.

Kept as plain dictionaries updated on the request path (a few hundred nanoseconds), rendered
only when scraped: no client library on the hot path. Per route: requests by status, a latency
histogram, rate-limit rejections, upstream errors by reason, and the breaker's state (read at
scrape time from the route's breaker).
"""

from __future__ import annotations

from bisect import bisect_left as _bucket
from collections.abc import Callable, Iterable

__all__ = ["BUCKETS", "ProxyMetrics"]

#: Latency histogram bucket bounds, seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BREAKER_STATES = {"closed": 0, "open": 1, "half_open": 2, "forced_open": 3, "disabled": 4}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ProxyMetrics:
    """Counters of one proxy process."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        #: per route: the count of each bucket (and of the one above them all), then the sum
        #: of the seconds; the count of requests is their total, added up when scraped
        self.latency: dict[str, list[float]] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.rate_limited: dict[str, int] = {}
        self.reloads = 0
        self.breaker_states: Callable[[], Iterable[tuple[str, str]]] = lambda: ()

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        key = (route, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        row = self.latency.get(route)
        if row is None:
            row = self.latency[route] = [0.0] * (len(BUCKETS) + 2)
        row[_bucket(BUCKETS, seconds)] += 1
        row[-1] += seconds

    def upstream_error(self, route: str, reason: str) -> None:
        """Count one failed upstream attempt."""
        key = (route, reason)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def rejected(self, route: str) -> None:
        """Count one rate-limit refusal."""
        self.rate_limited[route] = self.rate_limited.get(route, 0) + 1

    def render(self) -> str:
        """Everything, in the Prometheus text exposition format."""
        out: list[str] = []
        _family(
            out,
            "interlink_proxy_requests_total",
            "counter",
            "Requests answered, by route and status.",
            (
                (f'route="{_escape(route)}",status="{status}"', count)
                for (route, status), count in sorted(self.requests.items())
            ),
        )
        _family(
            out,
            "interlink_proxy_request_seconds",
            "histogram",
            "Time from request head to response end.",
            (),
        )
        for route, row in sorted(self.latency.items()):
            name = _escape(route)
            running: float = 0.0
            for bound, hits in zip(BUCKETS, row, strict=False):
                running += hits
                out.append(
                    f'interlink_proxy_request_seconds_bucket{{route="{name}",le="{bound}"}} '
                    f"{running:g}"
                )
            running += row[len(BUCKETS)]
            out.append(
                f'interlink_proxy_request_seconds_bucket{{route="{name}",le="+Inf"}} {running:g}'
            )
            out.append(f'interlink_proxy_request_seconds_sum{{route="{name}"}} {row[-1]:.6f}')
            out.append(f'interlink_proxy_request_seconds_count{{route="{name}"}} {running:g}')
        _family(
            out,
            "interlink_proxy_upstream_errors_total",
            "counter",
            "Failed upstream attempts, by reason.",
            (
                (f'route="{_escape(route)}",reason="{reason}"', count)
                for (route, reason), count in sorted(self.upstream_errors.items())
            ),
        )
        _family(
            out,
            "interlink_proxy_rate_limited_total",
            "counter",
            "Requests refused by a rate limit.",
            (
                (f'route="{_escape(route)}"', count)
                for route, count in sorted(self.rate_limited.items())
            ),
        )
        _family(
            out,
            "interlink_proxy_breaker_state",
            "gauge",
            "Breaker state per route (0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled).",
            (
                (f'route="{_escape(route)}"', _BREAKER_STATES.get(state, -1))
                for route, state in sorted(self.breaker_states())
            ),
        )
        _family(out, "interlink_proxy_reloads_total", "counter", "Route tables swapped in.", ())
        out.append(f"interlink_proxy_reloads_total {self.reloads}")
        return "\n".join(out) + "\n"


def _family(
    out: list[str], name: str, kind: str, help: str, samples: Iterable[tuple[str, object]]
) -> None:
    """Append one metric family: its HELP and TYPE lines, then ``name{labels} value`` each."""
    out += [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
    out += [f"{name}{{{labels}}} {value}" for labels, value in samples]
