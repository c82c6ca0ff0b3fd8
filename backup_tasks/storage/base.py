"""The storage contract every tier fulfils, and the key rules they all share.

A tier stores opaque byte streams under named keys and nothing else: it knows no
encryption, no databases and no Celery (restic's backend model). Five operations are
enough for backups, verification, retention and ``catalog rebuild``:

    put     stream in, atomically        get     stream out
    stat    size and time of one key     list    every key under a prefix, sorted
    delete  idempotent

Retry, rate limits and dry-run are wrappers with this same interface, so one
conformance suite (``tests/storage_conformance.py``) runs against every tier and
every wrapper. What only some tiers can do (lock objects, report free space) is a
capability of its own (``capabilities``), never a sixth operation here.

Keys are validated here, once, for every tier: a key that is safe on S3 but would
escape the root directory of a local tier (``../etc``) must be refused by all of them,
otherwise a backup written to S3 could not be copied to disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, ContextManager, Iterator, Protocol, runtime_checkable

from backup_tasks.errors import InputError

#: S3's own limit; a key longer than this could not be copied to an S3 tier.
MAX_KEY_LENGTH = 1024

#: Leaves room under the usual 255-byte file name limit for a tier's temporary name.
MAX_SEGMENT_LENGTH = 200

# Characters that mean the same thing on every filesystem and in an S3 URL path
# without escaping. A segment may not start with '.', which rules out '.' and '..'
# and reserves dot-names for a tier's in-flight temporary files.
_SEGMENT = re.compile(r"[A-Za-z0-9_@=+,:~-][A-Za-z0-9._@=+,:~-]*")
_PREFIX_CHARS = re.compile(r"[A-Za-z0-9._@=+,:~/-]*")

KEY_RULES = (
    "keys are '/'-separated relative names of letters, digits and . _ - + = @ , : ~; "
    "no segment may be empty, start with '.', or exceed "
    f"{MAX_SEGMENT_LENGTH} characters, and the whole key at most {MAX_KEY_LENGTH}"
)


@dataclass(frozen=True)
class ObjectInfo:
    """What a tier knows about one stored object without reading it.

    ``sha256`` is set when the tier computed it (a ``put`` always does while the bytes
    pass); ``etag`` is whatever an object store reports. Both are ``None`` when
    unknown, e.g. from ``list`` on a local directory, so callers that need a checksum
    read it from the manifest, not from here.
    """

    key: str
    size: int
    modified: datetime  # timezone-aware, UTC
    sha256: str | None = None
    etag: str | None = None


@runtime_checkable
class Storage(Protocol):
    """One storage tier. Every method raises StorageError (or a subclass) on failure.

    Transient failures (a network hiccup) raise TransientError so that the retry
    wrapper knows it may try again; everything else is permanent.
    """

    #: the tier's name from the configuration, used in every error message
    name: str

    def put(self, key: str, source: BinaryIO, *, size_hint: int | None = None) -> ObjectInfo:
        """Stream ``source`` to its end into ``key``; return the stored size and sha256.

        Atomic: readers see the old object or the whole new one, never a part, and on
        any failure nothing new is left under ``key``. Safe to call twice with the same
        content (it overwrites). Reads ``defaults.CHUNK_SIZE`` at a time, never the whole object.
        An exception raised by ``source`` itself propagates unchanged. ``size_hint``
        is advisory (it lets a tier refuse early or pick a part size).
        """
        ...

    def get(self, key: str) -> ContextManager[BinaryIO]:
        """Open ``key`` for streaming reads; close it by leaving the ``with`` block.

        Raises ObjectNotFound if the key is missing, at the latest when the context is
        entered (a lazy tier may open on enter).
        """
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Size and modification time of ``key``; ObjectNotFound if it is missing."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every complete object whose key starts with ``prefix``, sorted by key.

        ``prefix`` is a plain string prefix as in S3: ``"db/2024"`` matches
        ``"db/2024-01-02/x"``; end it with '/' to mean one directory. In-flight and
        temporary files never appear.
        """
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; removing a key that does not exist is not an error."""
        ...


def require_bytes(chunk: object, *, tier: str, key: str) -> None:
    """A put's source must yield bytes; a text-mode file is a caller's bug, named as such."""
    if not isinstance(chunk, (bytes, bytearray, memoryview)):
        raise InputError(
            f"tier '{tier}': source for '{key}' returned {type(chunk).__name__}, not bytes",
            "open the source in binary mode ('rb')",
        )


def validate_key(key: object) -> str:
    """Return ``key`` if every tier can store it safely; InputError naming it otherwise."""
    if not isinstance(key, str):
        raise InputError(f"invalid storage key {key!r}: not a string", KEY_RULES)
    reason = _key_problem(key)
    if reason:
        raise InputError(f"invalid storage key {key!r}: {reason}", KEY_RULES)
    return key


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` if it can only match valid keys' starts; InputError otherwise.

    The last segment may be partial ("db/2024-0"), but no segment may climb out of
    the tier ('..'), and the same characters as in keys are allowed.
    """
    if not isinstance(prefix, str):
        raise InputError(f"invalid storage prefix {prefix!r}: not a string", KEY_RULES)
    if prefix == "":
        return prefix
    reason = _common_problem(prefix)
    if not reason and not _PREFIX_CHARS.fullmatch(prefix):
        reason = "contains a character outside the allowed set"
    if not reason:
        whole_segments = prefix.split("/")[:-1]  # the last one may be cut short
        if any(not _SEGMENT.fullmatch(s) for s in whole_segments):
            reason = "has an empty segment or one starting with '.'"
        elif prefix.split("/")[-1].startswith("."):
            reason = "has a segment starting with '.'"
    if reason:
        raise InputError(f"invalid storage prefix {prefix!r}: {reason}", KEY_RULES)
    return prefix


def _common_problem(text: str) -> str:
    if "\x00" in text:
        return "contains a NUL character"
    if "\\" in text:
        return "contains a backslash"
    if text.startswith("/"):
        return "is absolute"
    if len(text.encode()) > MAX_KEY_LENGTH:
        return f"is longer than {MAX_KEY_LENGTH} bytes"
    return ""


def _key_problem(key: str) -> str:
    if key == "":
        return "is empty"
    problem = _common_problem(key)
    if problem:
        return problem
    for segment in key.split("/"):
        if segment == "":
            return "has an empty segment"
        if segment in (".", ".."):
            return f"has a '{segment}' segment"
        if segment.startswith("."):
            return f"segment {segment!r} starts with '.'"
        if len(segment) > MAX_SEGMENT_LENGTH:
            return f"segment is longer than {MAX_SEGMENT_LENGTH} characters"
        if not _SEGMENT.fullmatch(segment):
            return f"segment {segment!r} contains a character outside the allowed set"
    return ""
