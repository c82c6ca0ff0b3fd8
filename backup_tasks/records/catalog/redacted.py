"""Column types that mask secrets on the way into the catalog: errors, event messages, details.

Whatever code path writes a failed run's reason, an event or an audit entry, the text
passes ``redaction.redact`` as it is bound to the statement, so a tool's stderr quoted in
an error cannot put a password (plain or percent-encoded) into the database.
"""

from __future__ import annotations

from sqlalchemy import JSON, Text
from sqlalchemy.types import TypeDecorator

from backup_tasks.redaction import redact


class RedactedText(TypeDecorator):
    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return redact(value) if isinstance(value, str) else value


class RedactedJSON(TypeDecorator):
    """JSON whose every string (keys stay as they are) is redacted."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return _walk(value)


def _walk(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _walk(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_walk(v) for v in value]
    return value
