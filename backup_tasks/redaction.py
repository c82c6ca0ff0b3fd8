"""Masking secrets in text: the one function every place that stores or shows an error uses.

Errors are written not to carry secrets, but a client tool's stderr is not ours: it may
echo a connection URI, and a URI carries its password percent-encoded (``p%40ss%21``), so
masking the plain value is not enough. Every secret this process resolved from a
credential reference is remembered here (``credentials.resolve`` calls ``remember``), and
``redact`` masks each of them in any mix of plain and percent-encoded characters, plus the
password part of any ``scheme://user:password@host``, whatever secret it is.

It sits at the bottom of the layers so that ``errors.BackupError`` masks its own message
and remedy when it is made: the catalog, the audit log, events, worker logs and Celery's
result backend all store that text. Stores that may receive foreign text (a driver's
exception, a manifest's tool warnings) call ``redact`` again; it is idempotent.
"""

from __future__ import annotations

import logging
import re
import threading
from functools import lru_cache

MASK = "***"
#: values shorter than this are not masked: they would mangle ordinary words
MIN_SECRET_LEN = 4
#: the password runs to the last "@" of the authority (a password may contain "@"), never past "/", "?" or "#"
URL_PASSWORD_RE = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*):(?P<pw>[^\s/?#]+)@")

_lock = threading.Lock()
_known: dict[str, re.Pattern] = {}


def remember(secret: str | None) -> None:
    """Mask ``secret`` (in every encoding) in whatever this process redacts from now on."""
    if secret and len(secret) >= MIN_SECRET_LEN and secret not in _known:
        pattern = encoded_forms(secret)
        with _lock:
            _known[secret] = pattern


@lru_cache(maxsize=1024)
def encoded_forms(secret: str) -> re.Pattern:
    """A pattern matching ``secret`` with any of its characters percent-encoded (either hex case, once or twice),
    '+' for a space, or a backslash before a quote or backslash (as JSON and repr() write them)."""
    parts = []
    for ch in secret:
        utf8 = ch.encode("utf-8")
        # Longest first, so '%' does not stop short of '%25'; twice-encoded ('%2540') too, as a URI inside a URI is.
        forms = ["".join("%25" + _hex(b)[1:] for b in utf8), "".join(_hex(b) for b in utf8)]
        if ch in "\"'\\":
            forms.append(re.escape("\\" + ch))
        forms.append(re.escape(ch))
        if ch == " ":
            forms.append(r"\+")
        parts.append(f"(?:{'|'.join(forms)})")
    return re.compile("".join(parts))


def _hex(byte: int) -> str:
    return "%" + "".join(f"[{d.upper()}{d.lower()}]" if d.isalpha() else d for d in f"{byte:02x}")


def redact(text: str | None, secrets=()) -> str | None:
    """``text`` with every remembered secret and every one of ``secrets`` masked in any encoding,
    and any URL password masked. None stays None."""
    if not text:
        return text
    with _lock:
        known = dict(_known)
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_LEN and secret not in known:
            known[secret] = encoded_forms(secret)
    for secret in sorted(known, key=len, reverse=True):  # longest first: a secret containing another is masked whole
        text = known[secret].sub(MASK, text)
    return URL_PASSWORD_RE.sub(lambda m: f"{m['head']}:{MASK}@", text)


class LogFilter(logging.Filter):
    """Redacts a log record's message and traceback before any handler writes it.

    Installed on a process's log handlers (the worker's), because a library's own log
    line ("Task ... raised: ...") quotes whatever exception text reached it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's problem, not ours to raise
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
