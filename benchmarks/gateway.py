"""Claim: the interlink gateway, with a route, JWT auth and a rate limit on, serves at least
half of nginx's requests per second for at most 2.5x its CPU per request, adds at most 1 ms of
p99 latency at half of its saturation, and reloads 5,000 routes under load without failing a
request.

Same run, one worker each, all on loopback, driven by ``wrk`` (one thread, 32 connections);
the saturated runs and the half-load runs are repeated (``--rounds``, 3; the half-load ones
interleaved, direct, nginx, gateway in each round) and the medians reported:

- ``direct``: wrk against the upstream (an nginx answering a fixed 2-byte body);
- ``nginx``: wrk against nginx as a reverse proxy (keep-alive upstream pool) to that upstream;
- ``interlink``: wrk against ``python -m interlink.gateway`` (uvloop when installed) with one
  route among ten, RS256 JWT auth (the same token each time: the verified-token cache answers)
  and a per-consumer rate limit that never triggers;
- ``nginx, 2 workers`` and ``interlink gateway, 2 workers``: the same with one worker per CPU,
  what a user runs on this host (CPU summed over the workers; shown, not judged).

Saturation: requests/s with no pause. Latency: wrk at a fixed rate of half the gateway's
saturation, p50/p99 minus the direct ones. The rate is a schedule: the n-th request leaves at
``n / rate`` seconds (each connection, once answered, waits for the next free slot), so the
requests arrive evenly spread, the same for every contender (see ``_PACED``). Proxy CPU:
user + system time of the proxy process (from ``/proc``) over the requests served. Reload: the
gateway serving a 5,000-route file under full load gets SIGHUP twice (a changed 5,000-route file
each time); failed = non-2xx answers + socket errors, and the reload counter must have moved.

wrk and nginx come from Debian (``scripts/apt-install.sh`` installs them when missing).

Usage: ``python benchmarks/gateway.py [--quick] [--rounds N] [--markdown PATH] [--update-docs]
[--strict]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report as rep

ROOT = Path(__file__).resolve().parents[1]
REQ_RATIO_TARGET = 0.5
CPU_RATIO_TARGET = 2.5
ADDED_P99_TARGET_MS = 1.0
CONNECTIONS = 32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def _ensure_tools() -> tuple[str, str]:
    wrk = shutil.which("wrk")
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if wrk is None or nginx is None:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "apt-install.sh"), "wrk", "nginx-light"], check=True
        )
        wrk = shutil.which("wrk")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert wrk is not None
    return wrk, nginx


def _nginx(
    binary: str, folder: Path, port: int, upstream: int | None, workers: int = 1
) -> subprocess.Popen[bytes]:
    """One nginx process (no master; with ``workers`` > 1 a master and its workers): a fixed
    answer, or a keep-alive reverse proxy."""
    folder.mkdir(parents=True, exist_ok=True)
    if upstream is None:
        server = 'location / { default_type text/plain; return 200 "ok"; }'
        pool = ""
    else:
        pool = f"upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}"
        server = (
            "location / { proxy_pass http://up; proxy_http_version 1.1; "
            'proxy_set_header Connection ""; proxy_buffering on; }'
        )
    temp = " ".join(
        f"{kind}_temp_path {folder}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (folder / "nginx.conf").write_text(
        f"""
daemon off;
master_process {"off" if workers == 1 else "on"};
worker_processes {workers};
user root;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    {temp}
    {pool}
    server {{ listen 127.0.0.1:{port} reuseport backlog=4096; {server} }}
}}
"""
    )
    process = subprocess.Popen(
        [binary, "-p", str(folder), "-c", str(folder / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_port(port)
    return process


def _keys(folder: Path) -> str:
    """Write an RS256 public key; return a long-lived token signed by its private key."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (folder / "jwt.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    claims = {"sub": "bench", "iss": "bench", "aud": "bench", "exp": int(time.time()) + 86400}
    return jwt.encode(claims, key, algorithm="RS256")


def _routes(upstream: int, count: int, tag: str) -> str:
    filler = "".join(
        f"  - name: {tag}{i}\n    match: {{path: /{tag}{i}}}\n    upstream: http://127.0.0.1:{upstream}\n"
        for i in range(count)
    )
    main = f"""  - name: bench
    match: {{path: /, methods: [GET]}}
    upstream: http://127.0.0.1:{upstream}
    auth: {{methods: [jwt]}}
    rate_limits: [{{rate: 1000000000, burst: 1000000000, per: consumer}}]
"""
    return filler + main


def _gateway_config(
    folder: Path, port: int, admin: int | None, upstream: int, routes: str, *, name: str = "gw"
) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        f"""
listen: 127.0.0.1:{port}
admin: {f"127.0.0.1:{admin}" if admin else "null"}
auth:
  issuer: bench
  audience: bench
  jwt_keys: [{{algorithm: RS256, public_key_file: {folder / "jwt.pem"}}}]
routes:
{routes}"""
    )
    return path


def _gateway_command(config: Path, workers: int = 1) -> list[str]:
    """How the gateway is started, with its configuration file and number of workers."""
    command = [sys.executable, "-m", "interlink.gateway", "--config", str(config)]
    return [*command, "--workers", str(workers)]


def _gateway(config: Path, port: int, workers: int = 1) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        _gateway_command(config, workers),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_port(port, timeout=120.0)  # 5,000 routes validate slowly on a busy machine
    return process


@dataclass
class Wrk:
    requests: int
    rate: float
    p50_ms: float
    p99_ms: float
    failed: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    found = re.match(r"([\d.]+)(us|ms|s)", text)
    assert found, text
    return float(found.group(1)) * _UNITS[found.group(2)]


#: wrk's pacing at a fixed rate (``-- RATE``; 0: no pause). A fixed pause after each answer
#: would not make a rate: wrk's timers have whole-millisecond resolution, so connections answered
#: within the same millisecond wake together, and 32 connections started together stay in
#: lockstep; the proxy then gets all 32 requests at once every pause (the saturated run's
#: concurrency) and the p99 is the time to drain such a burst, about 32x its CPU per request.
#: Here the requests take the slots of one schedule, ``1 / rate`` apart, each sent at the
#: millisecond tick of its slot: at rate R about R/1000 requests leave together each
#: millisecond, the finest spreading wrk's timers allow. A slot that passed while every
#: connection was busy is skipped, not caught up in a burst.
_PACED = """
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *now);
]]
local now = ffi.new("bench_timespec")
local function wall_ms()  -- the clock wrk's timers count in
  ffi.C.clock_gettime(0, now)
  return tonumber(now.tv_sec) * 1000 + tonumber(now.tv_nsec) / 1e6
end
local gap, slot = 0, 0
function init(args)
  local rate = tonumber(args[1]) or 0
  gap = rate > 0 and 1000 / rate or 0
end
function delay()
  if gap == 0 then return 0 end
  local t = wall_ms()
  slot = math.max(slot + gap, t)
  return math.floor(slot) - math.floor(t)
end
"""


def _wrk(wrk: str, port: int, seconds: float, token: str, rate: float = 0.0) -> Wrk:
    """One wrk run: saturated, or at ``rate`` requests/s (``_PACED``)."""
    script = Path(tempfile.gettempdir()) / "interlink-gateway-bench.lua"
    script.write_text(_PACED)
    command = [
        wrk,
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{seconds:g}s",
        "--latency",
        "-H",
        f"Authorization: Bearer {token}",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/",
        "--",
        f"{rate:g}",
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    failed = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        failed += int(non2xx.group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        failed += sum(int(g) for g in errors.groups())
    return Wrk(requests, rate, p50, p99, failed)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and of its child processes (the workers), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
    return own + sum(_cpu_seconds(child) for child in children)


def _saturate(
    wrk: str, port: int, seconds: float, token: str, pid: int | None
) -> tuple[Wrk, float]:
    before = _cpu_seconds(pid) if pid else 0.0
    result = _wrk(wrk, port, seconds, token)
    used = _cpu_seconds(pid) - before if pid else 0.0
    return result, (used / result.requests * 1e6 if pid and result.requests else 0.0)


def _reload_under_load(
    wrk: str, folder: Path, upstream: int, token: str, seconds: float
) -> tuple[Wrk, int, float]:
    """(wrk's figures, reloads seen by the admin port, longest reload in seconds)."""
    import urllib.request

    port, admin = _free_port(), _free_port()
    config = _gateway_config(
        folder, port, admin, upstream, _routes(upstream, 5000, "a"), name="reload"
    )
    gateway = _gateway(config, port)
    try:
        _wait_port(admin)
        result: list[Wrk] = []
        import threading

        runner = threading.Thread(target=lambda: result.append(_wrk(wrk, port, seconds, token)))
        runner.start()
        longest = 0.0
        for n, tag in enumerate(("b", "c")):
            time.sleep(seconds / 4)
            _gateway_config(
                folder, port, admin, upstream, _routes(upstream, 5000, tag), name="reload"
            )
            started = time.monotonic()
            gateway.send_signal(signal.SIGHUP)
            url = f"http://127.0.0.1:{admin}/metrics"
            while time.monotonic() - started < 60:
                text = urllib.request.urlopen(url, timeout=5).read().decode()
                if f"interlink_proxy_reloads_total {n + 1}" in text:
                    break
                time.sleep(0.05)
            longest = max(longest, time.monotonic() - started)
        runner.join()
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
        )
        reloads = int(re.search(r"interlink_proxy_reloads_total (\d+)", text).group(1))  # type: ignore[union-attr]
        return result[0], reloads, longest
    finally:
        gateway.terminate()
        gateway.wait(15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per wrk run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="saturated and half-load rounds; medians reported"
    )
    rep.add_output_options(parser)
    args = parser.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    wrk, nginx_binary = _ensure_tools()
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="interlink-gw-bench-") as tmp:
        folder = Path(tmp)
        token = _keys(folder)
        try:
            upstream_port, nginx_port, gateway_port = _free_port(), _free_port(), _free_port()
            upstream = _nginx(nginx_binary, folder / "upstream", upstream_port, None)
            proxy = _nginx(nginx_binary, folder / "proxy", nginx_port, upstream_port)
            config = _gateway_config(
                folder, gateway_port, None, upstream_port, _routes(upstream_port, 9, "r")
            )
            gateway = _gateway(config, gateway_port)
            processes += [upstream, proxy, gateway]
            # what a user runs on this 2-CPU host: one worker per CPU, nginx and gateway alike
            nginx2_port, gateway2_port = _free_port(), _free_port()
            proxy2 = _nginx(nginx_binary, folder / "proxy2", nginx2_port, upstream_port, 2)
            config2 = _gateway_config(
                folder,
                gateway2_port,
                None,
                upstream_port,
                _routes(upstream_port, 9, "r"),
                name="gw2",
            )
            gateway2 = _gateway(config2, gateway2_port, workers=2)
            processes += [proxy2, gateway2]
            load_before = os.getloadavg()[0]
            contenders = {
                "direct": (upstream_port, None),
                "nginx": (nginx_port, proxy.pid),
                "interlink": (gateway_port, gateway.pid),
                "nginx2": (nginx2_port, proxy2.pid),
                "interlink2": (gateway2_port, gateway2.pid),
            }
            for port, _ in contenders.values():  # warm up: pools, caches
                _wrk(wrk, port, 1, token)
            rounds: dict[str, list[tuple[Wrk, float]]] = {name: [] for name in contenders}
            for _ in range(args.rounds):
                for name, (port, pid) in contenders.items():
                    rounds[name].append(_saturate(wrk, port, seconds, token, pid))
            rates = {name: [w.rate for w, _ in runs] for name, runs in rounds.items()}
            cpus = {name: [cpu for _, cpu in runs] for name, runs in rounds.items()}
            half = statistics.median(rates["interlink"]) / 2
            paced: dict[str, list[Wrk]] = {"direct": [], "nginx": [], "interlink": []}
            for _ in range(args.rounds):  # interleaved: a burst of other work hits all three
                for name, port in (
                    ("direct", upstream_port),
                    ("nginx", nginx_port),
                    ("interlink", gateway_port),
                ):
                    paced[name].append(_wrk(wrk, port, seconds, token, half))
            reload_result, reloads, longest = _reload_under_load(
                wrk,
                folder,
                upstream_port,
                token,
                max(seconds, 8.0),
            )
            load_after = os.getloadavg()[0]
        finally:
            for process in processes:
                process.terminate()
                process.wait(15)

    median = statistics.median
    req_ratios = [g / n for g, n in zip(rates["interlink"], rates["nginx"], strict=True)]
    cpu_ratios = [g / n for g, n in zip(cpus["interlink"], cpus["nginx"], strict=True)]
    req_ratio, cpu_ratio = median(req_ratios), median(cpu_ratios)
    req_ratio2 = median(g / n for g, n in zip(rates["interlink2"], rates["nginx2"], strict=True))
    cpu_ratio2 = median(g / n for g, n in zip(cpus["interlink2"], cpus["nginx2"], strict=True))
    # each round's figures minus the direct ones of the same round; the medians reported
    added_rounds = {
        name: [
            (w.p50_ms - d.p50_ms, w.p99_ms - d.p99_ms)
            for w, d in zip(paced[name], paced["direct"], strict=True)
        ]
        for name in ("nginx", "interlink")
    }
    added = {
        name: (median(a for a, _ in runs), median(b for _, b in runs))
        for name, runs in added_rounds.items()
    }
    paced_rate = median(w.rate for w in paced["interlink"])
    rows = [
        ["direct (upstream)", f"{median(rates['direct']):,.0f}", "", "", "", ""],
        [
            "nginx reverse proxy",
            f"{median(rates['nginx']):,.0f}",
            "1.00x",
            f"{added['nginx'][0]:+.3f} / {added['nginx'][1]:+.3f}",
            f"{median(cpus['nginx']):.1f}",
            "1.00x",
        ],
        [
            "interlink gateway (route + JWT + limit)",
            f"{median(rates['interlink']):,.0f}",
            f"{req_ratio:.2f}x",
            f"{added['interlink'][0]:+.3f} / {added['interlink'][1]:+.3f}",
            f"{median(cpus['interlink']):.1f}",
            f"{cpu_ratio:.2f}x",
        ],
        [
            "nginx, 2 workers",
            f"{median(rates['nginx2']):,.0f}",
            "1.00x",
            "",
            f"{median(cpus['nginx2']):.1f}",
            "1.00x",
        ],
        [
            "interlink gateway, 2 workers (`--workers 2`)",
            f"{median(rates['interlink2']):,.0f}",
            f"{req_ratio2:.2f}x",
            "",
            f"{median(cpus['interlink2']):.1f}",
            f"{cpu_ratio2:.2f}x",
        ],
    ]
    table = rep.markdown_table(
        [
            "setup (1 worker each)",
            "req/s (saturated)",
            "vs nginx",
            "added p50 / p99 ms at half load",
            "proxy CPU µs/req",
            "CPU vs nginx",
        ],
        rows,
    )
    checks = [
        (
            f"requests/s >= {REQ_RATIO_TARGET}x nginx (median of the rounds' ratios)",
            f"{req_ratio:.3f}x",
            req_ratio >= REQ_RATIO_TARGET,
        ),
        (
            f"CPU/request <= {CPU_RATIO_TARGET}x nginx (median of the rounds' ratios)",
            f"{cpu_ratio:.3f}x",
            cpu_ratio <= CPU_RATIO_TARGET,
        ),
        (
            f"added p99 <= {ADDED_P99_TARGET_MS} ms at {paced_rate:,.0f} req/s "
            "(half of saturation; median of the rounds)",
            f"{added['interlink'][1]:.3f} ms",
            added["interlink"][1] <= ADDED_P99_TARGET_MS,
        ),
        (
            f"5,000-route reload x{reloads} under load ({reload_result.requests:,} requests, "
            f"longest reload {longest:.2f} s)",
            f"{reload_result.failed} failed",
            reload_result.failed == 0 and reloads == 2,
        ),
    ]
    verdicts = rep.markdown_table(
        ["target", "measured", "met"], [[t, m, "yes" if ok else "**no**"] for t, m, ok in checks]
    )
    run = (
        f"wrk -t1 -c{CONNECTIONS} -d{seconds:g}s, medians of {args.rounds} rounds "
        f"(gateway/nginx per round: req/s {' '.join(f'{r:.2f}' for r in req_ratios)}, CPU "
        f"{' '.join(f'{r:.2f}' for r in cpu_ratios)}; added p99 ms at half load per round: "
        f"nginx {' '.join(f'{b:+.2f}' for _, b in added_rounds['nginx'])}, gateway "
        f"{' '.join(f'{b:+.2f}' for _, b in added_rounds['interlink'])}), all processes on one "
        f"machine shared with other work (load average {load_before:.1f} before, "
        f"{load_after:.1f} after)"
    )
    text = rep.results_text(run, table, verdicts)
    print(text)
    missed = sum(1 for _, _, ok in checks if not ok)
    return rep.publish("gateway", text, args, missed)


if __name__ == "__main__":
    sys.exit(main())
