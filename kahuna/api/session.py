"""Sessions and account links: login, logout, password-reset requests and the two pages that
mailed links open (`/confirm`, `/confirmForgotPassword`).

Login answers 200 with `UserCredentials` (the official client cannot read upstream's 201); the
password is never echoed back. Failed logins are limited per submitted email and per source
address (429 with Retry-After). An unknown email, a wrong password and a disabled account get the
same answer after the same work (a dummy argon2 verification), and a locked-out email looks the
same whether or not it exists.
"""

from __future__ import annotations

import html

from quart import Response, request

from kahuna.api.routes import RouteTable, json_body, json_response
from kahuna.auth import jwt, passwords
from kahuna.auth.ratelimit import FailureWindow
from kahuna.logs import get_logger
from kahuna.resources import identity
from kahuna.resources.errors import TooManyRequests, Unauthorized
from kahuna.resources.types import Field, Str, check_object

log = get_logger("kahuna.session")

_CREDENTIALS = (
    Field("email", Str(min_len=1, max_len=254), required=True),
    Field("password", Str(min_len=1, max_len=passwords.MAX_LENGTH), required=True),
    Field("jwt", Str(max_len=jwt.MAX_TOKEN_LENGTH)),  # the client's model has it; ignored
)
_EMAIL = (Field("email", Str(min_len=1, max_len=254), required=True),)
RESET_REQUESTS_PER_ADDRESS = 10  # per login window


def client_address(trusted_proxies: tuple[str, ...]) -> str:
    """The caller's address: the peer, or what the trusted front proxy says it saw."""
    peer = request.remote_addr or ""
    if peer in trusted_proxies:
        forwarded = request.headers.get("X-Forwarded-For", "")
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        if hops:
            return hops[-1]
    return peer


def install(table: RouteTable, resources) -> None:
    config = resources.config
    secrets = resources.secrets
    accounts = config.accounts
    lifetime = config.jwt_lifetime_hours * 3600.0
    per_account = FailureWindow(accounts.login_failures_per_account, accounts.login_window_seconds)
    per_address = FailureWindow(accounts.login_failures_per_address, accounts.login_window_seconds)
    reset_requests = FailureWindow(RESET_REQUESTS_PER_ADDRESS, accounts.login_window_seconds)

    async def login(principal):
        values = check_object(_CREDENTIALS, _object(await json_body()), "", partial=False)
        email = values["email"].strip().lower()
        address = client_address(config.trusted_proxies)
        wait = max(per_account.retry_after(email), per_address.retry_after(address))
        if wait:
            raise TooManyRequests(f"too many failed logins; retry in {wait} s", retry_after=wait)
        user = await identity.find_user_by_email(resources, email)
        stored = user.get("password_hash") if user else None
        ok = await passwords.verify_password(stored, values["password"])
        if not ok or user.get("enabled") is not True:
            per_account.fail(email)
            per_address.fail(address)
            log.info("login refused", address=address)
            raise Unauthorized("invalid email or password")
        per_account.forgive(email)
        if passwords.needs_rehash(stored):
            await identity.rehash_password(resources, user, values["password"])
        session_id, _ = await identity.open_session(resources, user, lifetime)
        token, _ = jwt.issue(key=secrets.jwt_signature, user_id=user["_id"], email=user["email"],
                             role=user.get("role", "user"), session_id=session_id,
                             lifetime_seconds=lifetime)
        log.info("login", user=user["_id"], address=address)
        return json_response({"email": user["email"], "password": "", "jwt": token})

    async def logout(principal):
        if principal.session_id:
            await identity.close_session(resources, principal.session_id)
            log.info("logout", user=principal.user_id)
        return Response("", status=204)

    async def reset_password(principal):
        values = check_object(_EMAIL, _object(await json_body()), "", partial=False)
        address = client_address(config.trusted_proxies)
        wait = reset_requests.retry_after(address)
        if wait:
            raise TooManyRequests(f"too many password-reset requests; retry in {wait} s", retry_after=wait)
        reset_requests.fail(address)
        user = await identity.find_user_by_email(resources, values["email"])
        if user is not None:
            await identity.start_password_reset(resources, user)
        # the same answer whether or not the address is known
        return json_response(None)

    async def confirm(principal):
        ok = await identity.confirm_registration(resources, request.args.get("user"), request.args.get("token"))
        if ok:
            return page("Account confirmed", "Your e-mail address is confirmed and your account is "
                        "active. Your password has been sent to you in another mail.", 200)
        return page("Invalid link", "This confirmation link is invalid, was already used, or has "
                    "expired. Ask your administrator for a new one.", 400)

    async def confirm_forgot(principal):
        ok = await identity.confirm_password_reset(resources, request.args.get("user"), request.args.get("token"))
        if ok:
            return page("New password sent", "A new password has been sent to you by mail. "
                        "Your other sessions were closed.", 200)
        return page("Invalid link", "This password-reset link is invalid, was already used, or has "
                    "expired. Ask for a new one.", 400)

    table.add("/login", "POST", "public", login, name="login")
    table.add("/logout", "POST", "authenticated", logout, name="logout")
    table.add("/resetPassword", "POST", "public", reset_password, name="reset_password")
    table.add("/resetPassword", "PUT", "public", reset_password, name="reset_password_upstream")
    table.add("/confirm", "GET", "public", confirm, name="confirm", prefix="")
    table.add("/confirmForgotPassword", "GET", "public", confirm_forgot, name="confirm_forgot_password", prefix="")


def _object(body):
    from kahuna.resources.errors import Invalid

    if not isinstance(body, dict):
        raise Invalid("request body must be a JSON object")
    return body


def page(title: str, message: str, status: int) -> Response:
    body = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Kowabunga: {html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>")
    # the URL carries a token: keep it out of caches and out of the Referer of any next page
    return Response(body, status=status, content_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
