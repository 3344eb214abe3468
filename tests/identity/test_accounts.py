"""The account life cycle through the official client, a real Kahuna and a real SMTP server:
creation mail -> confirmation page -> password mail -> login -> logout; forgotten passwords;
user-chosen passwords; what a user may and may not change about themselves."""

from __future__ import annotations

import re

import kowabunga
import pytest
from kowabunga.exceptions import (BadRequestException, ConflictException, ForbiddenException,
                                  NotFoundException, UnauthorizedException)

from tests.identity.helpers import (CONFIRM_LINK, PASSWORD_LINE, PUBLIC_URL, RESET_LINK,
                                    admin_users, create_confirmed_user, http, jwt_claims,
                                    jwt_client, login, open_link, unique, unique_email)


def test_full_lifecycle_from_creation_mail_to_logout(kahuna, admin, smtp_sink):
    email = unique_email("life")
    users = admin_users(admin)
    user = users.create_user(kowabunga.User(name="Ada Lovelace", email=email.upper(), role="user",
                                            notifications=True))
    assert (user.email, user.role, user.notifications) == (email, "user", True)  # stored lower-case

    welcome = smtp_sink.wait_for(email, "Welcome to Kowabunga!")
    link = CONFIRM_LINK.search(welcome.body)
    assert link and link.group(1) == user.id and link.group(0).startswith(f"{PUBLIC_URL}/confirm?")
    assert len(link.group(2)) >= 32

    # not confirmed yet: the account is disabled and has no password
    status, body, _ = http(kahuna, "POST", "/login", {"email": email, "password": "x" * 20})
    assert status == 401 and body["reason"] == "invalid email or password"

    status, page, headers = open_link(kahuna, link.group(0))
    assert status == 200 and "text/html" in headers["Content-Type"] and "confirmed" in page
    assert headers["Cache-Control"] == "no-store"
    password_mail = smtp_sink.wait_for(email, "Your Kowabunga password")
    password = PASSWORD_LINE.search(password_mail.body).group(1)
    assert len(password) >= 16 and password.isalnum()
    assert re.search(r"\d", password) and re.search(r"[a-z]", password) and re.search(r"[A-Z]", password)

    token = login(kahuna, email, password)
    claims = jwt_claims(token)
    assert claims["iss"] == "Kowabunga" and claims["uid"] == user.id and claims["email"] == email
    assert claims["role"] == "user" and claims["exp"] - claims["iat"] == 24 * 3600 and claims["jti"]
    with jwt_client(kahuna, token) as client:
        me = kowabunga.UserApi(client).read_user(user.id)
        assert (me.name, me.email) == ("Ada Lovelace", email)
        kowabunga.UserApi(client).logout()
        with pytest.raises(UnauthorizedException) as exc:
            kowabunga.UserApi(client).read_user(user.id)
        assert "closed" in exc.value.body
    # the password is never stored or answered in clear
    status, raw, _ = http(kahuna, "GET", f"/user/{user.id}", key=admin.configuration.api_key["ApiKeyAuth"])
    assert status == 200 and set(raw) == {"id", "name", "description", "email", "role", "notifications"}


def test_confirmation_page_refuses_empty_wrong_and_reused_tokens(kahuna, admin, smtp_sink):
    email = unique_email("conf")
    user = admin_users(admin).create_user(kowabunga.User(name=unique("c"), email=email, role="user"))
    link = CONFIRM_LINK.search(smtp_sink.wait_for(email, "Welcome").body)
    token = link.group(2)
    for query in (f"user={user.id}&token=", f"user={user.id}", f"user={user.id}&token={token[:-1]}x",
                  f"user=0123456789abcdef01234567&token={token}", f"user=nonsense&token={token}", ""):
        status, page, _ = http(kahuna, "GET", f"/confirm?{query}", api=False)
        assert status == 400 and "invalid" in page, query
    smtp_sink.assert_nothing_more(email, 1)  # only the welcome mail: no password was sent

    assert open_link(kahuna, link.group(0))[0] == 200
    smtp_sink.wait_for(email, "Your Kowabunga password")
    status, page, _ = open_link(kahuna, link.group(0))  # single use
    assert status == 400 and "already used" in page
    smtp_sink.assert_nothing_more(email, 2)


def test_forgotten_password_by_email_and_by_id(kahuna, admin, smtp_sink):
    user, password = create_confirmed_user(kahuna, admin, smtp_sink)
    old_session = login(kahuna, user.email, password)

    # an unknown address gets the same answer as a known one, and no mail goes anywhere
    nobody = unique_email("nobody")
    known = http(kahuna, "POST", "/resetPassword", {"email": user.email})
    unknown = http(kahuna, "POST", "/resetPassword", {"email": nobody})
    assert known[:2] == unknown[:2] == (200, None)
    reset = smtp_sink.wait_for(user.email, "password reset")
    link = RESET_LINK.search(reset.body)
    assert link and link.group(1) == user.id
    assert smtp_sink.to(nobody) == []

    # the old password still works until the link is used
    assert login(kahuna, user.email, password)
    assert open_link(kahuna, link.group(0))[0] == 200
    new_password = PASSWORD_LINE.search(smtp_sink.wait_for(user.email, "Your Kowabunga password", count=2).body).group(1)
    assert new_password != password
    with pytest.raises(UnauthorizedException):
        login(kahuna, user.email, password)
    assert login(kahuna, user.email, new_password)
    # a reset closes the sessions opened before it
    assert http(kahuna, "GET", f"/user/{user.id}", token=old_session)[0] == 401
    status, page, _ = open_link(kahuna, link.group(0))
    assert status == 400  # single use

    # upstream's PUT spelling, and the per-user PATCH (a user may ask for their own)
    token = login(kahuna, user.email, new_password)
    with jwt_client(kahuna, token) as client:
        kowabunga.UserApi(client).reset_user_password(user.id)
    smtp_sink.wait_for(user.email, "password reset", count=2)
    status, _, _ = http(kahuna, "PUT", "/resetPassword", {"email": user.email})
    assert status == 200
    status, body, _ = http(kahuna, "POST", "/resetPassword", {"mail": user.email})
    assert status == 400 and body["reason"] == "mail: unknown field"


def test_empty_reset_token_cannot_reset_anyone(kahuna, admin, smtp_sink):
    """Upstream matched an empty query token against an empty stored one."""
    user, password = create_confirmed_user(kahuna, admin, smtp_sink)
    before = len(smtp_sink.to(user.email))
    for query in (f"user={user.id}&token=", f"user={user.id}", f"user={user.id}&token=%20"):
        status, page, _ = http(kahuna, "GET", f"/confirmForgotPassword?{query}", api=False)
        assert status == 400 and "invalid" in page
    smtp_sink.assert_nothing_more(user.email, before)
    assert login(kahuna, user.email, password)


def test_user_cannot_promote_themselves_nor_change_email(kahuna, admin, smtp_sink):
    user, password = create_confirmed_user(kahuna, admin, smtp_sink)
    token = login(kahuna, user.email, password)
    with jwt_client(kahuna, token) as client:
        api = kowabunga.UserApi(client)
        with pytest.raises(ForbiddenException) as exc:
            api.update_user(user.id, kowabunga.UserUpdate(role="superAdmin"))
        assert "role" in exc.value.body
        with pytest.raises(ForbiddenException):
            api.update_user(user.id, kowabunga.UserUpdate(name="Mallory", email="mallory@evil.test"))
        assert api.read_user(user.id).role == "user"
        assert api.read_user(user.id).name == user.name  # nothing of a refused update is written
        # what they may change
        updated = api.update_user(user.id, kowabunga.UserUpdate(name="New Name", notifications=True,
                                                                role="user", email=user.email))
        assert (updated.name, updated.notifications, updated.role) == ("New Name", True, "user")
        # they may not see, change or delete anybody else
        other, _ = create_confirmed_user(kahuna, admin, smtp_sink)
        with pytest.raises(NotFoundException):
            api.read_user(other.id)
        with pytest.raises(NotFoundException):
            api.update_user(other.id, kowabunga.UserUpdate(name="x"))
        with pytest.raises(ForbiddenException):
            api.delete_user(other.id)
        with pytest.raises(ForbiddenException):
            api.create_user(kowabunga.User(name="x", email=unique_email(), role="superAdmin"))
        assert api.list_users() == [user.id]
    assert admin_users(admin).read_user(user.id).role == "user"


def test_chosen_password_needs_entropy_and_keeps_only_the_current_session(kahuna, admin, smtp_sink):
    user, password = create_confirmed_user(kahuna, admin, smtp_sink)
    other_session = login(kahuna, user.email, password)
    token = login(kahuna, user.email, password)
    with jwt_client(kahuna, token) as client:
        api = kowabunga.UserApi(client)
        for weak in ("password123", "Summer2024!", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "abcdefghijklmnopqrstuvwxyz"):
            with pytest.raises(BadRequestException) as exc:
                api.set_user_password(user.id, kowabunga.Password(value=weak))
            assert "entropy" in exc.value.body
        chosen = "correct horse battery staple 42"
        api.set_user_password(user.id, kowabunga.Password(value=chosen))
        assert api.read_user(user.id).id == user.id  # this session survives
    assert http(kahuna, "GET", f"/user/{user.id}", token=other_session)[0] == 401
    with pytest.raises(UnauthorizedException):
        login(kahuna, user.email, password)
    assert login(kahuna, user.email, chosen)


def test_admin_email_change_suspends_until_the_new_address_is_confirmed(kahuna, admin, smtp_sink):
    user, password = create_confirmed_user(kahuna, admin, smtp_sink)
    token = login(kahuna, user.email, password)
    new_email = unique_email("moved")
    admin_users(admin).update_user(user.id, kowabunga.UserUpdate(email=new_email))
    assert http(kahuna, "GET", f"/user/{user.id}", token=token)[0] == 401  # sessions revoked
    with pytest.raises(UnauthorizedException):
        login(kahuna, new_email, password)
    link = CONFIRM_LINK.search(smtp_sink.wait_for(new_email, "Confirm your new").body)
    assert open_link(kahuna, link.group(0))[0] == 200
    fresh = PASSWORD_LINE.search(smtp_sink.wait_for(new_email, "Your Kowabunga password").body).group(1)
    assert login(kahuna, new_email, fresh)


def test_deleting_a_user_revokes_sessions_and_keys(kahuna, admin, smtp_sink):
    user, password = create_confirmed_user(kahuna, admin, smtp_sink)
    token = login(kahuna, user.email, password)
    admin_users(admin).set_user_api_token(user.id)
    from tests.identity.helpers import KEY_LINE
    key = KEY_LINE.search(smtp_sink.wait_for(user.email, "API key").body).group(1)
    assert http(kahuna, "GET", f"/user/{user.id}", key=key)[0] == 200
    admin_users(admin).delete_user(user.id)
    assert http(kahuna, "GET", "/region", token=token)[0] == 401
    assert http(kahuna, "GET", "/region", key=key)[0] == 401
    with pytest.raises(NotFoundException):
        admin_users(admin).read_user(user.id)


def test_emails_are_unique_whatever_their_case(kahuna, admin, smtp_sink):
    email = unique_email("dup")
    admin_users(admin).create_user(kowabunga.User(name="a", email=email, role="user"))
    with pytest.raises(ConflictException):
        admin_users(admin).create_user(kowabunga.User(name="b", email=email.upper(), role="user"))
    status, body, _ = http(kahuna, "POST", "/user", {"name": "c", "email": "not-an-email", "role": "user"},
                           key=admin.configuration.api_key["ApiKeyAuth"])
    assert status == 400 and "e-mail" in body["reason"]
    status, body, _ = http(kahuna, "POST", "/user", {"name": "c", "email": unique_email(), "role": "root"},
                           key=admin.configuration.api_key["ApiKeyAuth"])
    assert status == 400 and "role" in body["reason"]
