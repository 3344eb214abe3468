"""Helpers of the identity tests: a real SMTP server (aiosmtpd) that keeps what it receives, and
the account life cycle driven through the official client and the mailed links."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import uuid

import kowabunga
import urllib3

from tests.conftest import make_client
from tests.kahuna_proc import MASTER_KEY, Kahuna, write_config
from tests.smtp_sink import Mail, SmtpSink, free_port  # noqa: F401 (re-exported)

PUBLIC_URL = "https://kowabunga.test"
JWT_SIGNATURE = "test-jwt-signature-" + "s" * 45
CONFIRM_LINK = re.compile(re.escape(PUBLIC_URL) + r"/confirm\?user=([0-9a-f]{24})&token=([A-Za-z0-9_-]+)")
RESET_LINK = re.compile(re.escape(PUBLIC_URL) + r"/confirmForgotPassword\?user=([0-9a-f]{24})&token=([A-Za-z0-9_-]+)")
PASSWORD_LINE = re.compile(r"^    ([A-Za-z0-9]{16,})$", re.M)
KEY_LINE = re.compile(r"^    ([A-Za-z0-9]{64})$", re.M)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def unique_email(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@acme.test"


def identity_config(work, sink: SmtpSink, **overrides):
    return write_config(work / "kahuna.yml", work / "data", publicUrl=PUBLIC_URL,
                        adminEmail="ops@acme.test", jwt={"signature": JWT_SIGNATURE, "lifetimeHours": 24},
                        smtp={"host": "127.0.0.1", "port": sink.port, "from": "kahuna@acme.test"},
                        **overrides)


def http(kahuna: Kahuna, method: str, path: str, body=None, *, headers=None, key: str | None = None,
         token: str | None = None, api: bool = True):
    """A raw request; answers (status, decoded JSON or text, headers)."""
    hdrs = dict(headers or {})
    if key:
        hdrs["X-API-Key"] = key
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    url = (kahuna.api if api else kahuna.url) + path
    resp = urllib3.request(method, url, body=data, headers=hdrs, retries=False, redirect=False, timeout=8)
    text = resp.data.decode()
    try:
        decoded = json.loads(text) if text else None
    except json.JSONDecodeError:
        decoded = text
    return resp.status, decoded, resp.headers


def open_link(kahuna: Kahuna, link: str):
    """GET a mailed link against the running Kahuna (links carry the configured public URL)."""
    assert link.startswith(PUBLIC_URL + "/"), link
    return http(kahuna, "GET", link[len(PUBLIC_URL):], api=False)


def admin_users(admin) -> kowabunga.UserApi:
    return kowabunga.UserApi(admin)


def forge_jwt(claims: dict, signature: str = JWT_SIGNATURE, header: dict | None = None) -> str:
    """An HS256 token signed here, with the test configuration's signature unless told otherwise."""
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(signature.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def jwt_claims(token: str) -> dict:
    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def login(kahuna: Kahuna, email: str, password: str) -> str:
    with make_client(kahuna, api_key=None) as anon:
        creds = kowabunga.UserApi(anon).login(kowabunga.UserCredentials(email=email, password=password))
    assert creds.password == "", "the password must not be echoed back"
    return creds.jwt


def create_confirmed_user(kahuna: Kahuna, admin, sink: SmtpSink, *, role: str = "user",
                          name: str | None = None) -> tuple[kowabunga.User, str]:
    """Create through the API, follow the mailed confirmation link, read the mailed password."""
    email = unique_email(role)
    user = admin_users(admin).create_user(kowabunga.User(name=name or unique(role), email=email, role=role))
    welcome = sink.wait_for(email, "Welcome")
    link = CONFIRM_LINK.search(welcome.body)
    assert link and link.group(1) == user.id, welcome.body
    status, page, _ = open_link(kahuna, link.group(0))
    assert status == 200 and "confirmed" in page, page
    password = PASSWORD_LINE.search(sink.wait_for(email, "Your Kowabunga password").body).group(1)
    return user, password


def jwt_client(kahuna: Kahuna, token: str):
    return make_client(kahuna, api_key=None, token=token)


def key_client(kahuna: Kahuna, key: str):
    return make_client(kahuna, api_key=key)


__all__ = ["MASTER_KEY", "Kahuna"]
