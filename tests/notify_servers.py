"""Real notification endpoints for the alert tests: an SMTP server (aiosmtpd) and an HTTP webhook.

Both run in this test process on a free loopback port and keep what they received, so
a test can read the mail or the JSON exactly as a mailbox or a chat bridge would get it.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    return free_port()


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Mailbox:
    """aiosmtpd handler: every message accepted, parsed, kept."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.messages.append(msg)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"

    @staticmethod
    def text(msg) -> str:
        """The message as a reader sees it: the plain-text body (or the HTML one), with LF line ends."""
        part = msg.get_body(("plain", "html"))
        return part.get_content().replace("\r\n", "\n")


@pytest.fixture
def smtp_server():
    """A real SMTP server on 127.0.0.1 (plain SMTP, no TLS); ``.url`` is the apprise URL that mails ops@example.org."""
    from aiosmtpd.controller import Controller

    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    # mailto:// (not mailtos://) with a custom host is plain SMTP: apprise's "insecure" mode, no STARTTLS.
    box.url = f"mailto://127.0.0.1:{port}?from=backup-tasks@example.org&to=ops@example.org"
    box.port = port
    try:
        yield box
    finally:
        controller.stop()


class Webhook:
    def __init__(self) -> None:
        self.posts: list[dict] = []  # {"path", "headers", "json"}
        self._lock = threading.Lock()

    def json_of(self, kind_fragment: str = "") -> list[dict]:
        with self._lock:
            return [p["json"] for p in self.posts if kind_fragment in json.dumps(p["json"])]


@contextlib.contextmanager
def serve_webhook(port: int = 0):
    """A real HTTP server (http.server in a thread) on ``port`` (0: any free one) that stores each POSTed JSON body."""
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                doc = json.loads(body)
            except ValueError:
                doc = {"unparsed": body.decode(errors="replace")}
            with hook._lock:
                hook.posts.append({"path": self.path, "headers": dict(self.headers), "json": doc})
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):  # keep pytest's output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    hook.port = port
    hook.url = lambda path="/hook": f"json://127.0.0.1:{port}{path}"
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def webhook_server():
    """A webhook on a free loopback port (see ``serve_webhook``); ``.url(path)`` gives the json:// URL."""
    with serve_webhook() as hook:
        yield hook
