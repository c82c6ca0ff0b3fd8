"""The encryption stage with pyrage behind 1 MiB buffers: the bytes, the reads it makes, and the errors it lets through.

pyrage asks for 8 KiB at a time; the stage reads its source a MiB at a time instead, so
a follower's or a counter's Python code runs once per MiB. A typed error of the source
must still come out as itself, not as pyrage's string inside its own error.
"""

from __future__ import annotations

import io
import os

import pytest
from pyrage import x25519

from backup_tasks.errors import PermanentError
from backup_tasks.stages.encrypt import BUFFER_BYTES, DecryptingReader, encrypt

MiB = 1 << 20


class Source:
    """A read-only stream that records the sizes asked for, and fails after ``fail_after`` bytes if given."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self._inner, self.asked, self.fail_after = io.BytesIO(data), [], fail_after

    def read(self, n: int = -1) -> bytes:
        self.asked.append(n)
        if self.fail_after is not None and self._inner.tell() >= self.fail_after:
            raise PermanentError("the staged file changed after it was written", "run the backup again")
        return self._inner.read(n)


def test_a_round_trip_reads_the_source_a_mib_at_a_time_and_decrypts_to_the_same_bytes():
    identity = x25519.Identity.generate()
    plain = os.urandom(3 * MiB + 4321)
    source, out = Source(plain), io.BytesIO()
    encrypt(source, out, [identity.to_public()])
    # io.BufferedReader may ask for a little less than its size to realign; never 8 KiB (400 reads here)
    assert min(source.asked) > BUFFER_BYTES // 2 and len(source.asked) <= 6
    with DecryptingReader(io.BytesIO(out.getvalue()), [identity], what="test") as reader:
        assert b"".join(iter(lambda: reader.read(MiB), b"")) == plain


def test_the_sources_own_error_comes_out_of_encrypt_through_the_buffer():
    with pytest.raises(PermanentError, match="changed after it was written"):
        encrypt(Source(os.urandom(2 * MiB), fail_after=MiB), io.BytesIO(), [x25519.Identity.generate().to_public()])
