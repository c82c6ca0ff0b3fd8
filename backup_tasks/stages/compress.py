"""Compression stage: zstd (default, in independent frames compressed in parallel), gzip, or none.

zstd level 3 with 2 threads ran at ~130 MiB/s here against ~20 MiB/s for gzip -6 at a
similar ratio (measured on this project's 2-core machines); compression is the slowest stage, so its speed is the chain's.
zstd is written as a sequence of independent frames (stages/zstd_frames.py): a pool of
single-threaded contexts compresses them, and a reader can decompress several at once;
every zstd tool reads the result as one stream.
"""

from __future__ import annotations

import gzip
import shutil
from typing import BinaryIO

from backup_tasks import defaults
from backup_tasks.errors import ConfigError
from backup_tasks.stages.zstd_frames import ZstdReader, compress_frames

SUFFIX = {"zstd": ".zst", "gzip": ".gz", "none": ""}


def compress(src: BinaryIO, dst: BinaryIO, method: str, *, level: int | None = None, threads: int = defaults.ZSTD_THREADS) -> None:
    """Copy ``src`` to ``dst`` compressed; both are streams read and written in chunks."""
    if method == "zstd":
        compress_frames(src, dst, level=level or defaults.ZSTD_LEVEL, threads=threads)
    elif method == "gzip":
        # mtime=0: the same input gives the same bytes, so a redelivered stage is reproducible.
        with gzip.GzipFile(fileobj=dst, mode="wb", compresslevel=level or defaults.GZIP_LEVEL, mtime=0) as gz:
            shutil.copyfileobj(src, gz, defaults.CHUNK_SIZE)
    elif method == "none":
        shutil.copyfileobj(src, dst, defaults.CHUNK_SIZE)
    else:
        raise ConfigError(f"unknown compression '{method}'", f"use one of: {', '.join(SUFFIX)}", field="compression")


def decompressing_reader(src: BinaryIO, method: str, *, threads: int | None = None) -> BinaryIO:
    """A readable stream of the plaintext behind ``src``.

    For zstd it holds threads once reading starts: they stop at the end or at an error,
    and a consumer that stops early must close() it (that leaves ``src`` open).
    """
    if method == "zstd":
        return ZstdReader(src, defaults.ZSTD_READ_THREADS if threads is None else threads)
    if method == "gzip":
        return gzip.GzipFile(fileobj=src, mode="rb")
    if method == "none":
        return src
    raise ConfigError(f"unknown compression '{method}' in manifest", "this build cannot read it; use a newer backup-tasks", field="compression")
