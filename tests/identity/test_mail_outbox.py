"""Mail goes through a persisted outbox: an SMTP server that is down for a while loses nothing,
even across a Kahuna restart; the queued bodies (links, passwords, keys) are sealed at rest and
gone once delivered."""

from __future__ import annotations

import json
import sqlite3
import time

import kowabunga
import pytest

from tests.conftest import make_client
from tests.identity.helpers import CONFIRM_LINK, SmtpSink, identity_config, open_link, unique_email
from tests.kahuna_proc import Kahuna


def outbox_rows(data_dir) -> list[dict]:
    with sqlite3.connect(f"file:{data_dir / 'kahuna.sqlite3'}?mode=ro", uri=True) as db:
        try:
            return [json.loads(doc) for (doc,) in db.execute("SELECT doc FROM mail_outbox")]
        except sqlite3.OperationalError:
            return []


@pytest.fixture
def down_sink():
    sink = SmtpSink()  # a port is reserved, but nothing listens yet
    yield sink
    sink.stop()


def test_mail_survives_an_smtp_outage_and_a_restart(tmp_path, down_sink):
    config = identity_config(tmp_path, down_sink)
    email = unique_email("patient")
    with Kahuna(tmp_path, config) as k, make_client(k) as admin:
        user = kowabunga.UserApi(admin).create_user(kowabunga.User(name="patient", email=email, role="user"))
        deadline = time.monotonic() + 10
        while "mail not sent yet" not in k.new_stderr():
            assert time.monotonic() < deadline, "no delivery attempt was made"
            time.sleep(0.1)
        rows = outbox_rows(tmp_path / "data")
        assert [r["to"] for r in rows] == [email] and rows[0]["attempts"] >= 1
        assert "confirm?user=" not in json.dumps(rows) and rows[0]["body_sealed"]  # sealed at rest
        assert "Welcome" in rows[0]["subject"]
    # Kahuna stopped while the mail was still queued; it comes back, then the SMTP server does
    with Kahuna(tmp_path, config) as k:
        time.sleep(0.5)
        assert down_sink.to(email) == []
        down_sink.start()
        welcome = down_sink.wait_for(email, "Welcome", timeout=20)
        link = CONFIRM_LINK.search(welcome.body)
        assert link and link.group(1) == user.id
        assert open_link(k, link.group(0))[0] == 200  # the queued link still works
        down_sink.wait_for(email, "Your Kowabunga password")
        deadline = time.monotonic() + 5
        while outbox_rows(tmp_path / "data"):  # delivered mails leave nothing behind
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert len(down_sink.to(email)) == 2  # each mail once
