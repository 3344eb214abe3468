"""Outgoing mail through a persisted outbox, so that an SMTP server down for a while loses nothing.

`enqueue(resources, to, subject, text)` stores the message in the `mail_outbox` collection and
wakes the sender; it is what every feature calls (account links, passwords, user and agent API
keys). The bodies carry secrets (one-time passwords, keys), so they are sealed under the server
secret at rest (AES-GCM, the message id as associated data) and the document is deleted as soon
as the SMTP server has accepted it.

`Outbox.run` is one background task in the root nursery: it sends what is due in one SMTP session
(a worker thread: smtplib blocks), deletes what was accepted, and reschedules the rest with an
exponential backoff (1 s doubling to 5 min). A message the server refuses for good (5xx), or that
could not be delivered for `max_age_hours`, is dropped with an ERROR log line naming recipient and
subject (never the body). Delivery is at-least-once: a crash between acceptance and deletion
sends that message again on restart.

Transport security: port 465 is implicit TLS; port 587 requires STARTTLS (upstream's default);
on other ports STARTTLS is used when the server offers it. Credentials, when configured, are only
sent once the session is encrypted, except to a server on the loopback interface.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import trio

from kahuna.logs import get_logger
from kahuna.resources.errors import Unavailable
from kahuna.resources.kind import Kind, register
from kahuna.store import errors as store_errors
from kahuna.store.base import delete_if_present, new_id

from kahuna.auth.secrets import seal, unseal

log = get_logger("kahuna.mail")

OUTBOX = register(Kind(
    name="mail",
    collection="mail_outbox",
    fields=(),
    unique=(),
    indexed=("next_attempt",),
    routes=frozenset(),  # internal: no API
    schema_version=1,
    label="mail",
))

SMTP_TIMEOUT = 20.0  # seconds per socket operation
BATCH = 50
IDLE_POLL = 60.0  # look at the outbox at least this often, even without a wake-up
DEFAULT_SENDER = "Kowabunga <noreply@localhost>"


async def enqueue(resources, to: str, subject: str, text: str) -> str:
    """Queue a plain-text mail to `to`; answers the message id. The send happens in the background."""
    server_secret = resources.secrets.server_secret
    mail_id = new_id()
    now = datetime.now(timezone.utc)
    doc = {
        "_id": mail_id, "schema_version": OUTBOX.schema_version, "created_at": now, "updated_at": now,
        "to": to, "subject": subject,
        "body_sealed": seal(server_secret.encode(), text, associated=mail_id),
        "attempts": 0, "next_attempt": time.time(), "last_error": "",
    }
    try:
        await resources.store.insert(OUTBOX.collection, doc)
    except store_errors.Unavailable as exc:
        raise Unavailable(f"database unavailable: {exc}") from None
    outbox = resources.extras.get("outbox")
    if outbox is not None:
        outbox.wake()
    log.info("mail queued", id=mail_id, to=to, subject=subject)
    return mail_id


@dataclass
class _Outgoing:
    doc: dict[str, Any]
    message: EmailMessage
    error: str = ""
    permanent: bool = False
    sent: bool = False


class Outbox:
    def __init__(self, smtp, *, max_age_hours: float = 72.0, retry_min: float = 1.0,
                 retry_max: float = 300.0) -> None:
        self.smtp = smtp
        self.max_age = max_age_hours * 3600.0
        self.retry_min = retry_min
        self.retry_max = retry_max
        self._wakeup = trio.Event()
        self._limiter = trio.CapacityLimiter(1)

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self, resources, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if not self.smtp.enabled:
            log.warning("no SMTP server configured (global.smtp.host): mails stay queued")
        while True:
            self._wakeup = trio.Event()  # a wake-up during delivery runs the loop again at once
            delay = IDLE_POLL
            if self.smtp.enabled:
                try:
                    delay = await self._deliver_due(resources)
                except store_errors.StoreError as exc:
                    log.warning("mail outbox unreadable", error=str(exc))
            with trio.move_on_after(delay):
                await self._wakeup.wait()

    async def _deliver_due(self, resources) -> float:
        """Send what is due; answers the seconds until the next message is due."""
        store = resources.store
        docs = await store.find(OUTBOX.collection, {}, sort="next_attempt", limit=BATCH)
        now = time.time()
        due = [d for d in docs if d.get("next_attempt", 0) <= now]
        if not due:
            upcoming = [d.get("next_attempt", now) - now for d in docs]
            return max(0.05, min(upcoming + [IDLE_POLL]))
        secret = resources.secrets.server_secret.encode()
        outgoing = []
        for doc in due:
            try:
                text = unseal(secret, doc.get("body_sealed", ""), associated=doc["_id"])
            except ValueError:
                log.error("mail dropped", id=doc["_id"], to=doc.get("to"), subject=doc.get("subject"),
                          reason="body does not open with this server secret")
                await delete_if_present(store, OUTBOX.collection, doc["_id"])
                continue
            outgoing.append(_Outgoing(doc, self._message(doc, text)))
        if outgoing:
            await trio.to_thread.run_sync(self._send_batch, outgoing, limiter=self._limiter,
                                          abandon_on_cancel=True)
        for out in outgoing:
            doc = out.doc
            if out.sent:
                await delete_if_present(store, OUTBOX.collection, doc["_id"])
                log.info("mail sent", id=doc["_id"], to=doc.get("to"), subject=doc.get("subject"))
                continue
            attempts = int(doc.get("attempts", 0)) + 1
            age = now - _timestamp(doc.get("created_at"), now)
            if out.permanent or age >= self.max_age:
                await delete_if_present(store, OUTBOX.collection, doc["_id"])
                log.error("mail dropped", id=doc["_id"], to=doc.get("to"), subject=doc.get("subject"),
                          attempts=attempts, reason=out.error)
                continue
            backoff = min(self.retry_max, self.retry_min * 2 ** (attempts - 1))
            await store.update_fields(OUTBOX.collection, doc["_id"], {
                "attempts": attempts, "next_attempt": time.time() + backoff, "last_error": out.error,
                "updated_at": datetime.now(timezone.utc)})
            log.warning("mail not sent yet", id=doc["_id"], to=doc.get("to"), attempts=attempts,
                        retry_in_seconds=round(backoff, 1), reason=out.error)
        return 0.0  # look again at once: more may be due, or the next retry sets the wait

    def _message(self, doc: dict[str, Any], text: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.smtp.sender or DEFAULT_SENDER
        msg["To"] = doc["to"]
        msg["Subject"] = doc.get("subject", "")
        msg["Date"] = format_datetime(datetime.now(timezone.utc))
        msg["Message-ID"] = make_msgid(idstring=doc["_id"], domain="kahuna")
        msg.set_content(text)
        return msg

    def _send_batch(self, outgoing: list[_Outgoing]) -> None:
        """Worker thread: one SMTP session for the batch; records an error on each failed item."""
        cfg = self.smtp
        context = ssl.create_default_context()
        try:
            if cfg.port == 465:
                client: smtplib.SMTP = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=SMTP_TIMEOUT,
                                                        context=context)
            else:
                client = smtplib.SMTP(cfg.host, cfg.port, timeout=SMTP_TIMEOUT)
        except (OSError, smtplib.SMTPException) as exc:
            for out in outgoing:
                out.error = f"cannot connect to {cfg.host}:{cfg.port}: {exc}"
            return
        try:
            client.ehlo()
            encrypted = cfg.port == 465
            if not encrypted and (cfg.port == 587 or client.has_extn("starttls")):
                client.starttls(context=context)
                client.ehlo()
                encrypted = True
            if cfg.username:
                if not encrypted and cfg.host not in ("127.0.0.1", "::1", "localhost"):
                    raise smtplib.SMTPException("refusing to send credentials without TLS")
                client.login(cfg.username, cfg.password)
            for out in outgoing:
                try:
                    client.send_message(out.message)
                    out.sent = True
                except smtplib.SMTPRecipientsRefused as exc:
                    codes = [code for code, _ in exc.recipients.values()]
                    out.error = f"recipient refused: {codes}"
                    out.permanent = all(500 <= c < 600 for c in codes)
                except smtplib.SMTPResponseException as exc:
                    out.error = f"{exc.smtp_code} {exc.smtp_error!r}"
                    out.permanent = 500 <= exc.smtp_code < 600
        except (OSError, smtplib.SMTPException) as exc:
            for out in outgoing:
                if not out.sent and not out.error:
                    out.error = f"SMTP session failed: {type(exc).__name__}: {exc}"
        finally:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()


def _timestamp(value: Any, default: float) -> float:
    return value.timestamp() if isinstance(value, datetime) else default
