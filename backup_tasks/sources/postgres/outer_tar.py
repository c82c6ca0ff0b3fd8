"""The outer tar of the old base backup layout (base_layout.OUTER), written without tarfile's stream writer.

New base backups stream one tar from pg_basebackup (basebackup.py) and need no outer
tar; this writer stays because backups in the old layout are still read, and it is
what produces one, byte for byte, for the tests that prove they still verify and
restore.

tarfile's ``w|`` mode appends every 16 KiB it copies to a growing bytes buffer and cuts
a record off its front each time, copying the buffer again and again: for a 1 GB
cluster that was most of the dump stage after pg_basebackup itself. The format is
simple enough to write directly: for each file a POSIX pax header (tarfile builds it),
the bytes in large chunks, zero padding to 512 bytes; then the two zero blocks that end
an archive, padded to tar's 10240-byte record as tarfile pads it. Any tar reads it.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

from backup_tasks import defaults

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


def write(out: BinaryIO, members: list[tuple[str, Path]]) -> int:
    """Write ``(name in the archive, file)`` pairs as one pax tar to ``out``; the bytes written."""
    written = 0
    buf = bytearray(defaults.CHUNK_SIZE)
    view = memoryview(buf)
    for name, path in members:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), stat.S_IMODE(st.st_mode)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            header = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
            out.write(header)
            written += len(header)
            left = info.size
            while left:
                n = fh.readinto(view[:min(left, len(buf))])
                if not n:
                    raise OSError(f"{path} shrank while it was archived ({left} bytes short)")
                out.write(view[:n])
                left -= n
            written += info.size
        pad = -info.size % BLOCK
        out.write(bytes(pad))
        written += pad
    end = 2 * BLOCK
    end += -(written + end) % RECORD
    out.write(bytes(end))
    return written + end
