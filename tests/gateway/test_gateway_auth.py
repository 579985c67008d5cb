"""Authentication at the gateway, attacked: expired, early, wrong key, alg none, algorithm
confusion, missing scopes, forged identity headers, API keys, JWKS."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from proxy_support import LoopThread, start_proxy

from interlink.gateway import build_table, parse_config
from interlink.proxy import hash_api_key

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret!"
ISSUER = "https://issuer.test"
AUDIENCE = "food-api"


def _pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa_jwks": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "other_rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


@pytest.fixture(scope="module")
def jwks_url(loop_thread: LoopThread, keys: dict[str, Any]) -> Iterator[str]:
    """A JWKS endpoint on loopback publishing the 'rsa_jwks' key under kid 'rot-1'."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys["rsa_jwks"].public_key()))
    jwk.update({"kid": "rot-1", "alg": "RS256", "use": "sig"})

    async def serve_jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_get("/jwks.json", serve_jwks)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    runner, port = loop_thread.run(start())
    yield f"http://127.0.0.1:{port}/jwks.json"
    loop_thread.run(runner.cleanup())


@pytest.fixture(scope="module")
def base(
    loop_thread: LoopThread,
    upstream: str,
    keys: dict[str, Any],
    jwks_url: str,
    tmp_path_factory: Any,
) -> Iterator[str]:
    folder: Path = tmp_path_factory.mktemp("keys")
    (folder / "rsa.pem").write_text(_pem(keys["rsa"]))
    (folder / "ec.pem").write_text(_pem(keys["ec"]))
    config = parse_config(
        f"""
listen: 127.0.0.1:0
auth:
  issuer: {ISSUER}
  audience: {AUDIENCE}
  leeway: 5
  jwks_url: {jwks_url}
  jwt_keys:
    - {{algorithm: HS256, secret: "{SECRET}"}}
    - {{algorithm: RS256, public_key_file: {folder / "rsa.pem"}}}
    - {{algorithm: ES256, public_key_file: {folder / "ec.pem"}}}
  api_keys:
    - {{consumer: mobile-app, key_sha256: {hash_api_key("key-123")}, scopes: [orders:read]}}
routes:
  - name: orders
    match: {{path: /orders}}
    upstream: {upstream}
    auth: {{scopes: ["orders:read"]}}
  - name: admin
    match: {{path: /admin}}
    upstream: {upstream}
    auth: {{methods: [jwt], claims: {{role: admin}}}}
  - name: public
    match: {{path: /public}}
    upstream: {upstream}
"""
    )
    _, server, port = loop_thread.run(start_proxy(build_table(config)))
    yield f"http://127.0.0.1:{port}"
    loop_thread.close_server(server)


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": "user-7",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "scope": "orders:read",
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _call(
    base: str, path: str = "/orders", token: str | None = None, **headers: str
) -> httpx.Response:
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return httpx.get(base + path, headers=headers, timeout=10)


def _reason(response: httpx.Response) -> str:
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    return str(body["reason"])


def test_each_algorithm_verifies(base: str, keys: dict[str, Any]) -> None:
    """HS256, RS256 and ES256 tokens pass and the upstream learns who called."""
    for token in (
        jwt.encode(_claims(), SECRET, algorithm="HS256"),
        jwt.encode(_claims(), keys["rsa"], algorithm="RS256"),
        jwt.encode(_claims(), keys["ec"], algorithm="ES256"),
    ):
        response = _call(base, token=token)
        assert response.status_code == 200, response.text
        seen = response.json()["headers"]
        assert seen["x-auth-subject"] == "user-7"
        assert seen["x-auth-method"] == "jwt"


def test_jwks_key_is_fetched(base: str, keys: dict[str, Any]) -> None:
    """A token signed by a key published only at the JWKS URL verifies."""
    token = jwt.encode(_claims(), keys["rsa_jwks"], algorithm="RS256", headers={"kid": "rot-1"})
    assert _call(base, token=token).status_code == 200


def test_missing_credentials(base: str) -> None:
    """No credentials: 401 auth_missing with a challenge."""
    response = _call(base)
    assert response.status_code == 401
    assert _reason(response) == "auth_missing"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_expired_and_not_yet_valid(base: str) -> None:
    """exp in the past (beyond leeway): auth_expired; nbf in the future: auth_not_yet_valid."""
    now = int(time.time())
    expired = jwt.encode(_claims(exp=now - 60), SECRET, algorithm="HS256")
    response = _call(base, token=expired)
    assert (response.status_code, _reason(response)) == (401, "auth_expired")
    early = jwt.encode(_claims(nbf=now + 60), SECRET, algorithm="HS256")
    response = _call(base, token=early)
    assert (response.status_code, _reason(response)) == (401, "auth_not_yet_valid")


def test_leeway_allows_small_skew(base: str) -> None:
    """Expired two seconds ago, with five seconds of leeway: still accepted."""
    token = jwt.encode(_claims(exp=int(time.time()) - 2), SECRET, algorithm="HS256")
    assert _call(base, token=token).status_code == 200


def test_wrong_key_issuer_audience(base: str, keys: dict[str, Any]) -> None:
    """Signed by an unknown key, or for another issuer or audience: auth_invalid."""
    for token in (
        jwt.encode(_claims(), "another-secret-another-secret-12345", algorithm="HS256"),
        jwt.encode(_claims(), keys["other_rsa"], algorithm="RS256"),
        jwt.encode(_claims(iss="https://evil.test"), SECRET, algorithm="HS256"),
        jwt.encode(_claims(aud="other-api"), SECRET, algorithm="HS256"),
        jwt.encode(_claims(exp=None), SECRET, algorithm="HS256"),
    ):
        response = _call(base, token=token)
        assert (response.status_code, _reason(response)) == (401, "auth_invalid")


def test_alg_none_is_refused(base: str) -> None:
    """An unsigned token (alg: none) never passes."""
    token = jwt.encode(_claims(), None, algorithm="none")
    response = _call(base, token=token)
    assert (response.status_code, _reason(response)) == (401, "auth_invalid")


def test_algorithm_confusion_is_refused(base: str, keys: dict[str, Any]) -> None:
    """An HS256 token 'signed' with the RS256 public key as its secret is refused."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(_claims()).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(_pem(keys["rsa"]).encode(), signing_input, hashlib.sha256).digest()
    token = f"{header}.{payload}.{b64(signature)}"
    response = _call(base, token=token)
    assert (response.status_code, _reason(response)) == (401, "auth_invalid")


def test_missing_scope_and_claim(base: str) -> None:
    """Valid token without the route's scope or claim: 403 forbidden."""
    no_scope = jwt.encode(_claims(scope="menu:read"), SECRET, algorithm="HS256")
    response = _call(base, token=no_scope)
    assert (response.status_code, _reason(response)) == (403, "forbidden")
    user = jwt.encode(_claims(role="user"), SECRET, algorithm="HS256")
    response = _call(base, "/admin", token=user)
    assert (response.status_code, _reason(response)) == (403, "forbidden")
    admin = jwt.encode(_claims(role="admin"), SECRET, algorithm="HS256")
    assert _call(base, "/admin", token=admin).status_code == 200


def test_api_keys(base: str) -> None:
    """A known API key passes as its consumer; an unknown one is auth_invalid; a route that
    accepts only JWTs does not take API keys."""
    response = _call(base, **{"x-api-key": "key-123"})
    assert response.status_code == 200
    assert response.json()["headers"]["x-auth-subject"] == "mobile-app"
    response = _call(base, **{"x-api-key": "key-999"})
    assert (response.status_code, _reason(response)) == (401, "auth_invalid")
    response = _call(base, "/admin", **{"x-api-key": "key-123"})
    assert (response.status_code, _reason(response)) == (401, "auth_missing")


def test_forged_identity_headers_are_stripped(base: str) -> None:
    """A client's own x-auth-* headers never reach the upstream, authenticated or not."""
    forged = {"x-auth-subject": "admin", "x-auth-scopes": "everything"}
    response = _call(base, "/public", **forged)
    seen = response.json()["headers"]
    assert "x-auth-subject" not in seen
    assert "x-auth-scopes" not in seen
    response = _call(base, **forged, **{"x-api-key": "key-123"})
    assert response.json()["headers"]["x-auth-subject"] == "mobile-app"
    assert response.json()["headers"]["x-auth-scopes"] == "orders:read"


def test_verified_tokens_are_cached_until_expiry(base: str) -> None:
    """The same token twice: both pass (the second from the cache)."""
    token = jwt.encode(_claims(), SECRET, algorithm="HS256")
    assert _call(base, token=token).status_code == 200
    assert _call(base, token=token).status_code == 200


def test_a_repeated_header_is_answered_from_the_cache_until_the_token_expires() -> None:
    """The same Authorization header again is taken at once from the cache of verified
    tokens; once the token has expired (leeway included) it is not, and is refused."""
    from interlink.proxy import Authenticator, JwtKey, Requirement
    from interlink.proxy.errors import ProxyError
    from interlink.testing import FakeClock

    clock = FakeClock(time.time())
    auth = Authenticator(
        keys=[JwtKey(algorithm="HS256", secret=SECRET)],
        issuer=ISSUER,
        audience=AUDIENCE,
        leeway=5,
        clock=clock,
    )
    claims = _claims()
    header = "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")
    need = Requirement(methods=("jwt",))
    assert auth.authenticate_now(need, header, None) is None  # not verified yet
    identity = asyncio.run(auth.authenticate(need, header, None))
    for _ in range(2):
        assert auth.authenticate_now(need, header, None) == identity
    clock.advance(claims["exp"] - clock() + 6)
    assert auth.authenticate_now(need, header, None) is None
    with pytest.raises(ProxyError) as refused:
        asyncio.run(auth.authenticate(need, header, None))
    assert refused.value.reason == "auth_expired"
