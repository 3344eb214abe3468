"""A real SMTP server (aiosmtpd) on a loopback port that keeps what it receives, for the tests
that read what Kahuna mails (account links, passwords, API keys)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from email import message_from_bytes
from email.policy import default as default_policy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Mail:
    to: str
    subject: str
    body: str


class SmtpSink:
    """aiosmtpd on a fixed loopback port; `stop()` / `start()` simulate an outage."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[Mail] = []
        self._cond = threading.Condition()
        self._controller = None

    def start(self) -> "SmtpSink":
        from aiosmtpd.controller import Controller

        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                msg = message_from_bytes(envelope.original_content, policy=default_policy)
                body = msg.get_content().replace("\r\n", "\n")
                with sink._cond:
                    for rcpt in envelope.rcpt_tos:
                        sink.messages.append(Mail(rcpt.lower(), str(msg["Subject"]), body))
                    sink._cond.notify_all()
                return "250 OK"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def to(self, address: str) -> list[Mail]:
        with self._cond:
            return [m for m in self.messages if m.to == address.lower()]

    def wait_for(self, address: str, subject: str = "", *, count: int = 1, timeout: float = 15.0) -> Mail:
        """The `count`-th message to `address` whose subject contains `subject`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages if m.to == address.lower() and subject in m.subject]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                assert left > 0, f"no mail #{count} {subject!r} to {address} (got {[m.subject for m in self.to(address)]})"
                self._cond.wait(left)

    def assert_nothing_more(self, address: str, expected: int, wait: float = 0.7) -> None:
        time.sleep(wait)
        got = self.to(address)
        assert len(got) == expected, [m.subject for m in got]
