"""Time-bound and configured behaviour, on a Kahuna with short windows: login rate limits (per
account, per source address, no oracle on which emails exist), expired confirmation and reset
links, and user-chosen passwords switched off (global.passwords.allowUserChosen: false)."""

from __future__ import annotations

import time

import kowabunga
import pytest
from kowabunga.exceptions import ForbiddenException

from tests.conftest import make_client
from tests.identity.helpers import (CONFIRM_LINK, RESET_LINK, admin_users, create_confirmed_user,
                                    http, identity_config, jwt_client, login, open_link, unique_email)
from tests.kahuna_proc import Kahuna

WINDOW = 4  # seconds
LINK_SECONDS = 1.5


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory, smtp_sink):
    work = tmp_path_factory.mktemp("limits")
    config = identity_config(work, smtp_sink, passwords={"allowUserChosen": False},
                             accounts={"confirmLinkHours": LINK_SECONDS / 3600, "resetLinkHours": LINK_SECONDS / 3600},
                             login={"maxFailuresPerAccount": 3, "maxFailuresPerAddress": 6, "windowSeconds": WINDOW})
    with Kahuna(work, config) as k:
        yield k


@pytest.fixture(scope="module")
def admin(kahuna):
    with make_client(kahuna) as client:
        yield client


def attempt(kahuna, email, password, address):
    return http(kahuna, "POST", "/login", {"email": email, "password": password},
                headers={"X-Forwarded-For": f"203.0.113.9, {address}"})


def test_login_is_limited_per_account_without_revealing_which_accounts_exist(kahuna, admin, smtp_sink):
    user, password = create_confirmed_user(kahuna, admin, smtp_sink)
    ghost = unique_email("ghost")
    # before the lockout: an unknown email and a wrong password look the same
    a = attempt(kahuna, user.email, "wrong-password-1", "198.51.100.1")
    b = attempt(kahuna, ghost, "wrong-password-1", "198.51.100.2")
    assert a[:2] == b[:2] and a[0] == 401
    for n in range(2):  # each account from its own address: only the account limit is hit
        assert attempt(kahuna, user.email, "wrong", f"198.51.100.{10 + n}")[0] == 401
        assert attempt(kahuna, ghost, "wrong", f"198.51.100.{20 + n}")[0] == 401
    # locked out: even the right password is refused, from any address, for a while
    real = attempt(kahuna, user.email, password, "198.51.100.30")
    fake = attempt(kahuna, ghost, password, "198.51.100.31")
    assert real[0] == fake[0] == 429
    assert real[1]["reason"].split(";")[0] == fake[1]["reason"].split(";")[0]
    assert set(real[1]) == set(fake[1]) == {"status", "error", "reason"}
    assert 1 <= int(real[2]["Retry-After"]) <= WINDOW and 1 <= int(fake[2]["Retry-After"]) <= WINDOW
    # another account is not affected
    other, other_password = create_confirmed_user(kahuna, admin, smtp_sink)
    assert attempt(kahuna, other.email, other_password, "198.51.100.32")[0] == 200
    # the lockout ends with the window
    time.sleep(int(real[2]["Retry-After"]) + 0.2)
    assert attempt(kahuna, user.email, password, "198.51.100.33")[0] == 200


def test_login_is_limited_per_source_address(kahuna, admin, smtp_sink):
    user, password = create_confirmed_user(kahuna, admin, smtp_sink)
    address = "192.0.2.77"
    for n in range(6):  # spread over many accounts: the per-account limit is never hit
        assert attempt(kahuna, unique_email(f"spray{n}"), "guess", address)[0] == 401
    status, body, headers = attempt(kahuna, user.email, password, address)
    assert status == 429 and int(headers["Retry-After"]) >= 1
    # the same account from elsewhere is fine (the X-Forwarded-For of a trusted proxy counts)
    assert attempt(kahuna, user.email, password, "192.0.2.78")[0] == 200


def test_expired_confirmation_and_reset_links(kahuna, admin, smtp_sink):
    email = unique_email("late")
    admin_users(admin).create_user(kowabunga.User(name="late", email=email, role="user"))
    link = CONFIRM_LINK.search(smtp_sink.wait_for(email, "Welcome").body).group(0)
    assert "1 seconds" in smtp_sink.to(email)[0].body or "2 seconds" in smtp_sink.to(email)[0].body
    time.sleep(LINK_SECONDS + 0.3)
    status, page, _ = open_link(kahuna, link)
    assert status == 400 and "expired" in page
    smtp_sink.assert_nothing_more(email, 1, wait=0.3)
    status, _, _ = http(kahuna, "POST", "/login", {"email": email, "password": "whatever-it-is"})
    assert status == 401

    confirmed, password = create_confirmed_user(kahuna, admin, smtp_sink)
    assert http(kahuna, "POST", "/resetPassword", {"email": confirmed.email})[0] == 200
    reset = RESET_LINK.search(smtp_sink.wait_for(confirmed.email, "password reset").body).group(0)
    count = len(smtp_sink.to(confirmed.email))
    time.sleep(LINK_SECONDS + 0.3)
    status, page, _ = open_link(kahuna, reset)
    assert status == 400 and "expired" in page
    smtp_sink.assert_nothing_more(confirmed.email, count, wait=0.3)
    assert login(kahuna, confirmed.email, password)  # the password did not change


def test_user_chosen_passwords_can_be_forbidden(kahuna, admin, smtp_sink):
    user, password = create_confirmed_user(kahuna, admin, smtp_sink)
    with jwt_client(kahuna, login(kahuna, user.email, password)) as client:
        with pytest.raises(ForbiddenException) as exc:
            kowabunga.UserApi(client).set_user_password(
                user.id, kowabunga.Password(value="a perfectly strong passphrase of 2024"))
        assert "allowUserChosen" in exc.value.body
    with pytest.raises(ForbiddenException):  # not even a superAdmin may choose one
        admin_users(admin).set_user_password(user.id, kowabunga.Password(value="another strong passphrase 77"))
    assert login(kahuna, user.email, password)
