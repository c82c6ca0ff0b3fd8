"""One side of a re-encryption, as a process of its own: ``python -m backup_tasks.stages.age_child decrypt|encrypt FD``.

pyrage holds the GIL while it works, so age decryption and encryption in two threads of
one process take turns instead of running side by side. In two processes (reencrypt_pipe.py
starts them, stdout of one into stdin of the other) each has a core. The keys come through
the inherited pipe ``FD``, one per line, never argv or the environment, where ``ps`` and
``/proc`` would show them. Data passes on stdin and stdout. A failure is one line on
stderr (pyrage's message, which never holds key material) and exit status 1.
"""

from __future__ import annotations

import os
import sys

import pyrage
from pyrage import x25519


class _Out:
    """stdout as pyrage's writer: straight os.write calls, no buffer to copy through."""

    def write(self, data) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(1, view):]
        return len(data)

    def flush(self) -> None:
        pass


def main(argv: list[str]) -> int:
    mode, keys_fd = argv[0], int(argv[1])
    with os.fdopen(keys_fd, "rb") as fh:
        keys = fh.read().decode().split()
    source = os.fdopen(0, "rb", buffering=1 << 20)
    out = _Out()
    try:
        if mode == "decrypt":
            pyrage.decrypt_io(source, out, [x25519.Identity.from_str(k) for k in keys])
        elif mode == "encrypt":
            pyrage.encrypt_io(source, out, [x25519.Recipient.from_str(k) for k in keys])
        else:
            raise ValueError(f"unknown mode {mode!r}")
    except BrokenPipeError:
        sys.stderr.write("the reading side closed the pipe\n")
        return 1
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises a typed error
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
