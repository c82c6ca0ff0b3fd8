"""The re-encryption stream's digests and the read-back that proves a new object, on real age data and a real local tier.

The age children hash what passes in their own processes: the old object (read straight
from its file, or fed through a pipe when it is no file) and the plaintext between them.
The read-back must refuse a copy that is not byte for byte what was written, or that
does not decrypt with the new identity to that plaintext.
"""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from pyrage import x25519

from backup_tasks.errors import VerificationFailed
from backup_tasks.ops.keys import reencrypt_verify
from backup_tasks.records import keys
from backup_tasks.stages.encrypt import encrypt
from backup_tasks.stages.reencrypt_pipe import ReencryptingReader, decrypted_digest

MiB = 1 << 20


def digest(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


class Stream(io.RawIOBase):
    """A source with no file behind it (as an S3 body is): the children are fed through a pipe."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        return self._inner.readinto(buf)


@pytest.fixture
def two_keys():
    old, new = x25519.Identity.generate(), x25519.Identity.generate()
    return old, new


def encrypted(plain: bytes, recipient) -> bytes:
    out = io.BytesIO()
    encrypt(io.BytesIO(plain), out, [recipient])
    return out.getvalue()


@pytest.mark.parametrize("as_file", [True, False], ids=["file read by the child", "stream fed through a pipe"])
def test_the_children_hash_the_old_object_and_the_plaintext_and_the_new_object_decrypts(tmp_path, two_keys, as_file):
    old, new = two_keys
    plain = os.urandom(3 * MiB + 12345)
    stored = encrypted(plain, old.to_public())
    path = tmp_path / "old.age"
    path.write_bytes(stored)
    with (open(path, "rb") if as_file else Stream(stored)) as src:
        with ReencryptingReader(src, [old], [new.to_public()], what="test", digests=True) as reader:
            out = b"".join(iter(lambda: reader.read(MiB), b""))
    assert reader.source_digest == digest(stored) and reader.plain_digest == digest(plain)
    (tmp_path / "new.age").write_bytes(out)
    with open(tmp_path / "new.age", "rb") as src:
        assert decrypted_digest(src, [new], what="test") == (digest(out), digest(plain))
    with open(tmp_path / "new.age", "rb") as src, pytest.raises(VerificationFailed) as refused:
        decrypted_digest(src, [old], what="test")  # the old identity no longer opens it
    assert refused.value.check == "decrypt"


@pytest.mark.parametrize("size", [2 * MiB, 9 * MiB], ids=["in-process", "child process"])
def test_the_read_back_refuses_a_copy_that_differs_or_decrypts_to_other_bytes(tmp_path, make_config, runtime_for,
                                                                               session_keys, size):
    rt = runtime_for(make_config(""))
    identity = keys.identities_for(rt.settings.identities_file, [keys.key_id(str(rt.recipients[0]))])[0]
    plain = os.urandom(size)
    stored = encrypted(plain, identity.to_public())
    rt.storage("local").put("t/b1/data.r2.age", io.BytesIO(stored))
    doc = {"backup_id": "b1", "stored": {"size": len(stored), "sha256": hashlib.sha256(stored).hexdigest()},
           "encryption": {"method": "age", "recipients": [keys.key_id(str(rt.recipients[0]))]}}
    seen: list[tuple] = []
    reencrypt_verify.read_back_decrypting(rt, "local", "t/b1/data.r2.age", doc, digest(plain),
                                          lambda *report: seen.append(report))
    assert seen and seen[-1] == ("verify", len(stored), len(stored))

    with pytest.raises(VerificationFailed) as other_plain:  # decrypts, but not to what was encrypted
        reencrypt_verify.read_back_decrypting(rt, "local", "t/b1/data.r2.age", doc, digest(plain[:-1] + bytes([plain[-1] ^ 1])), None)
    assert other_plain.value.check == "plaintext-sha256"

    damaged = bytearray(stored)
    damaged[len(damaged) // 2] ^= 1
    rt.storage("local").put("t/b1/data.r2.age", io.BytesIO(bytes(damaged)))
    with pytest.raises(VerificationFailed) as changed:
        reencrypt_verify.read_back(rt, "local", "t/b1/data.r2.age", doc)
    assert changed.value.check == "stored-sha256"
    with pytest.raises(VerificationFailed) as broken:  # the flipped bit fails age's authentication first
        reencrypt_verify.read_back_decrypting(rt, "local", "t/b1/data.r2.age", doc, digest(plain), None)
    assert broken.value.check in ("decrypt", "stored-sha256")
