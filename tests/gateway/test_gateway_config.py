"""The configuration file: validation errors name file, line and field; --check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from interlink.gateway import ConfigError, build_table, load_config, parse_config

GOOD = """\
listen: 127.0.0.1:0
admin: null
routes:
  - name: orders
    match: {path: "/orders/{id}", methods: [get]}
    upstream: http://127.0.0.1:9
    rewrite: "/v1/orders/{id}"
    retry: {retries: 2, backoff: 0.01, max_backoff: 0.1}
    breaker: {minimum_calls: 5}
    rate_limits:
      - {rate: 10, burst: 20, per: consumer}
"""


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml")
    return str(caught.value)


def test_a_good_file_builds() -> None:
    """A valid file gives a table whose route matches."""
    table = build_table(parse_config(GOOD))
    match = table.router.match("GET", "x", "/orders/7", [])
    assert match.upstream_path == "/v1/orders/7"
    assert match.route.target.limits[0].burst == 20


def test_unknown_key_names_file_line_and_field() -> None:
    """A misspelt key is an error at its line, not silently ignored."""
    text = GOOD.replace("    breaker: {minimum_calls: 5}", "    breaker: {minimum_cals: 5}")
    assert _error(text).startswith("gw.yaml:9: routes.0.breaker.minimum_cals: Extra inputs")


def test_bad_value_names_the_rule() -> None:
    """A value out of range: line, field and the rule it breaks."""
    text = GOOD.replace("retries: 2", "retries: -1")
    message = _error(text)
    assert "gw.yaml:8: routes.0.retry.retries" in message
    assert "greater than or equal to 0" in message


def test_every_problem_is_listed() -> None:
    """Two problems, two lines of the error."""
    text = GOOD.replace("retries: 2", "retries: -1").replace("rate: 10", "rate: 0")
    assert len(_error(text).splitlines()) == 2


def test_route_rules_are_checked() -> None:
    """A rewrite naming an unknown parameter is refused at build time with the route named."""
    config = parse_config(GOOD.replace("/v1/orders/{id}", "/v1/orders/{order}"))
    with pytest.raises(ConfigError, match=r"routes\.0 \(orders\).*order"):
        build_table(config)


def test_yaml_syntax_error_has_a_line() -> None:
    """Broken YAML: the line of the problem."""
    assert _error("routes:\n  - name: [x\n").startswith("gw.yaml:3: not valid YAML")


def test_cross_field_rules() -> None:
    """service:// without discovery, auth without an auth section, duplicate names."""
    service = GOOD.replace("http://127.0.0.1:9", "service://orders")
    assert "'discovery' is not set" in _error(service)
    auth = GOOD.replace("    rewrite:", "    auth: {scopes: [a]}\n    rewrite:")
    assert "no 'auth' section" in _error(auth)


def test_environment_variables_fill_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """${NAME} takes the variable's value, ${NAME:-default} the default when it is unset or
    empty, $${ is a literal ${, and the filled text is validated like any other."""
    monkeypatch.setenv("GW_PORT", "8123")
    monkeypatch.setenv("GW_EMPTY", "")
    monkeypatch.delenv("GW_HOST", raising=False)
    text = GOOD.replace("listen: 127.0.0.1:0", 'listen: "${GW_HOST:-127.0.0.2}:${GW_PORT}"')
    text = text.replace('rewrite: "/v1/orders/{id}"', 'rewrite: "/v1/$${x}${GW_EMPTY:-}"')
    config = parse_config(text)
    assert config.listen == "127.0.0.2:8123"
    assert config.routes[0].rewrite == "/v1/${x}"
    monkeypatch.setenv("GW_PORT", "eighty")
    assert "gw.yaml:1: listen: String should match pattern" in _error(text)


def test_an_unset_variable_names_file_line_field_and_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unset variable without a default is refused, every one with its line."""
    monkeypatch.delenv("GW_NOPE", raising=False)
    monkeypatch.delenv("GW_UPSTREAM", raising=False)
    text = GOOD.replace("127.0.0.1:0", "127.0.0.1:${GW_NOPE}").replace(
        "http://127.0.0.1:9", "${GW_UPSTREAM}"
    )
    assert _error(text).splitlines() == [
        "gw.yaml:1: listen: the environment variable 'GW_NOPE' is not set "
        "(write ${GW_NOPE:-default} for a default)",
        "gw.yaml:6: routes.0.upstream: the environment variable 'GW_UPSTREAM' is not set "
        "(write ${GW_UPSTREAM:-default} for a default)",
    ]


def test_missing_file() -> None:
    """A file that cannot be read says so."""
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config("/nonexistent/gateway.yaml")


def test_check_command(tmp_path: Path) -> None:
    """--check exits 0 on a good file, 2 with the located error on a bad one."""
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    ok = subprocess.run(
        [sys.executable, "-m", "interlink.gateway", "--config", str(good), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "valid (1 routes)" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("retries: 2", "retries: many"))
    refused = subprocess.run(
        [sys.executable, "-m", "interlink.cli.main", "gateway", "--config", str(bad), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert f"{bad}:8: routes.0.retry.retries" in refused.stderr
