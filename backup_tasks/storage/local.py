"""The ``local`` tier: objects are files under one directory on this host.

A key maps to the path ``<root>/<key>``; key validation (base.validate_key) is what
keeps every path inside the root. Writes go to a dot-named temporary file in the
target's own directory, are fsynced, and are renamed into place with ``os.replace``,
so a reader (or a crash) sees the old object or the whole new one, never a part. Dot
names are never valid keys, which is how ``list`` knows to skip files in flight.

Backups hold secrets, so directories are created 0700 and files 0600 whatever the
process umask is. The file-level pieces (temp names and their sweep, modes, directory
fsync, what to do about each OS error) are in storage/local_files.py.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat as stat_mod
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Iterator

from backup_tasks.defaults import CHUNK_SIZE
from backup_tasks.errors import ObjectNotFound, StorageError, TierUnavailable
from backup_tasks.storage import disk, local_files
from backup_tasks.storage.base import ObjectInfo, require_bytes, validate_key, validate_prefix
from backup_tasks.storage.capabilities import DiskState, PartialWrite

class LocalStorage:
    """A tier rooted at ``path`` (made absolute now, so a later chdir changes nothing).

    Construction does no I/O: a verify worker that only reads must not create
    directories, and a missing root simply holds no objects until the first put
    creates it (0700).
    """

    def __init__(self, name: str, path: str | os.PathLike[str]) -> None:
        self.name = name
        self.root = Path(os.path.abspath(os.fspath(path)))

    def __repr__(self) -> str:
        return f"LocalStorage(name={self.name!r}, path={str(self.root)!r})"

    # -- the Storage interface -------------------------------------------------------

    def put(self, key: str, source: BinaryIO, *, size_hint: int | None = None) -> ObjectInfo:
        """Stream ``source`` into ``<root>/<key>`` via temp file, fsync and rename.

        sha256 and size are computed while the bytes pass. If ``size_hint`` is larger
        than the free space, the put is refused before a byte is written rather than
        filling the disk that other services share.
        """
        target = self._path(validate_key(key))
        if size_hint is not None:
            self._check_free_space(key, size_hint)
        fd, tmp = self._create_temp(key, target)
        try:
            digest, size = hashlib.sha256(), 0
            while True:
                chunk = source.read(CHUNK_SIZE)  # errors of the source propagate unchanged
                if not chunk:
                    break
                require_bytes(chunk, tier=self.name, key=key)
                digest.update(chunk)
                size += len(chunk)
                try:
                    local_files.write_all(fd, chunk)
                except OSError as exc:
                    raise self._os_error("writing", key, exc) from exc
            try:
                os.fsync(fd)
                modified = os.fstat(fd).st_mtime
                os.close(fd)
                fd = -1
                os.replace(tmp, target)
                local_files.fsync_dir(target.parent)  # makes the rename itself survive a crash
            except OSError as exc:
                raise self._os_error("writing", key, exc) from exc
        except BaseException:
            if fd >= 0:
                os.close(fd)
            local_files.unlink_quietly(tmp)
            raise
        return ObjectInfo(key=key, size=size, modified=local_files.utc(modified), sha256=digest.hexdigest())

    def get(self, key: str) -> BinaryIO:
        """Open the object for reading; the returned file is its own context manager."""
        path = self._path(validate_key(key))
        try:
            # O_NOFOLLOW: a symlink planted in the tier is not an object (as in stat and
            # list), so get cannot be turned into a read of some other file.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise self._not_found(key) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._not_found(key) from None
            raise self._os_error("reading", key, exc) from exc
        try:
            if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                raise self._not_found(key)  # a directory is a key prefix, not an object
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(validate_key(key))
        try:
            st = os.stat(path, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            raise self._not_found(key) from None
        except OSError as exc:
            raise self._os_error("reading", key, exc) from exc
        if not stat_mod.S_ISREG(st.st_mode):
            raise self._not_found(key)  # a directory is a key prefix, not an object
        return ObjectInfo(key=key, size=st.st_size, modified=local_files.utc(st.st_mtime))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Walk the tree lazily, in key order, skipping temp files and symlinks.

        Validation happens now, not at the first ``next()``, so a bad prefix fails
        where it is passed.
        """
        validate_prefix(prefix)
        head = prefix.rpartition("/")[0]  # the deepest directory the prefix names whole
        return self._walk(self.root / head if head else self.root, head, prefix)

    def delete(self, key: str) -> None:
        """Unlink the file, then prune directories the delete left empty.

        Pruning keeps years of retention from leaving a forest of empty directories;
        ``rmdir`` only ever removes an empty one, so it cannot lose data.
        """
        path = self._path(validate_key(key))
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as exc:
            raise self._os_error("deleting", key, exc) from exc
        self._prune(path.parent)

    def _prune(self, parent: Path) -> None:
        while parent != self.root and self.root in parent.parents:
            try:
                os.rmdir(parent)
            except OSError:
                break  # not empty (or already gone, or not ours to remove): stop here
            parent = parent.parent

    # -- capability: LinkIn ----------------------------------------------------------

    def link_in(self, key: str, path: str) -> ObjectInfo | None:
        """Hard-link the file at ``path`` into place as ``key``; None if it is on another filesystem.

        The same steps as ``put`` without the copy: the file is made 0600, its data
        fsynced (whoever wrote it did not need to: this is the durable step), linked to a
        dot-named temp name beside the target and renamed over it, then the directory is
        fsynced. A reader sees the old object or the whole new one. ``modified`` is set
        to now, as a copy's would be. The temp name is the one ``put`` uses, so a link
        whose process died before the rename is removed like any killed write.
        """
        target = self._path(validate_key(key))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise self._os_error("linking", key, exc) from exc
        tmp: Path | None = None
        try:
            st = os.fstat(fd)
            if not stat_mod.S_ISREG(st.st_mode):
                raise StorageError(f"tier '{self.name}': {path} is not a regular file; cannot store it as '{key}'",
                                   "pass the staged file itself")
            self._make_dirs(target.parent)  # a copy would create them too
            if os.stat(target.parent).st_dev != st.st_dev:
                return None  # another filesystem: find out before paying for the fsync
            os.fchmod(fd, local_files.FILE_MODE)
            os.fsync(fd)
            os.utime(fd)
            for _ in range(local_files.DIRECTORY_RACE_ATTEMPTS):
                self._make_dirs(target.parent)
                tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
                try:
                    os.link(path, tmp, follow_symlinks=False)
                    break
                except FileNotFoundError:
                    tmp = None
                    if not os.path.exists(path):
                        raise
                    continue  # a concurrent delete pruned the directory just now; recreate it
            else:
                raise StorageError(f"tier '{self.name}': could not create the directory for '{key}' under {self.root}: "
                                   "it kept disappearing",
                                   "another process is deleting under this tier at the same time; retry the upload")
            if os.stat(tmp, follow_symlinks=False).st_ino != st.st_ino:  # ``path`` was replaced since it was opened
                raise StorageError(f"tier '{self.name}': {path} changed while it was being stored as '{key}'",
                                   "nothing else may write the file being stored; run the upload again")
            os.replace(tmp, target)
            tmp = None
            local_files.fsync_dir(target.parent)
            modified = os.fstat(fd).st_mtime
        except OSError as exc:
            if tmp is not None:
                local_files.unlink_quietly(tmp)
            if exc.errno in local_files.CANNOT_LINK:
                return None
            raise self._os_error("linking", key, exc) from exc
        except BaseException:
            if tmp is not None:
                local_files.unlink_quietly(tmp)
            raise
        finally:
            os.close(fd)
        return ObjectInfo(key=key, size=st.st_size, modified=local_files.utc(modified))

    # -- capability: PartialWrites --------------------------------------------------

    def remove_partial_writes(self, prefix: str, older_than: datetime, *, dry_run: bool = False) -> list[PartialWrite]:
        """Unlink the temp files of puts that died (``.<name>.<random>.tmp``) whose key starts with ``prefix``.

        Only names that ``put`` itself makes are touched, never a symlink, and only when
        last modified before ``older_than``: a put still running rewrites its temp file
        all the time. Directories left empty are pruned as ``delete`` does.
        """
        return local_files.remove_partial_writes(self.root, prefix, older_than, self._prune, dry_run=dry_run)

    # -- capabilities: Probe, DiskSpace -----------------------------------------------

    def probe(self, timeout: float) -> str:
        """The directory (before the first backup: its nearest existing parent) is writable.

        Writes nothing; ``timeout`` is not needed for a local check.
        """
        root = self.root
        if not root.exists():
            parent = disk.nearest_existing(root)
            if parent.is_dir() and disk.writable(parent):
                return f"{root} does not exist yet; the first backup creates it"
            raise TierUnavailable(f"{root} does not exist and {parent} is not writable",
                                  f"create {root} for the worker's user (uid {os.geteuid()}) or choose another path "
                                  f"for tier '{self.name}'")
        if not root.is_dir():
            raise TierUnavailable(f"{root} is not a directory", f"point tier '{self.name}' at a directory")
        if not os.access(root, os.R_OK | os.W_OK | os.X_OK):
            raise TierUnavailable(f"{root} is not readable and writable by uid {os.geteuid()}",
                                  self._remedy(errno.EACCES))
        return f"{root} is writable"

    def disk_state(self) -> DiskState:
        """Free space of the filesystem under the root; a local tier expects no mount of its own."""
        return DiskState(mounted=None, usage=disk.usage(self.root))

    # -- helpers ---------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root / key

    def _create_temp(self, key: str, target: Path) -> tuple[int, Path]:
        """Create the parent directories and an exclusive 0600 temp file beside ``target``."""
        for _ in range(local_files.DIRECTORY_RACE_ATTEMPTS):
            try:
                self._make_dirs(target.parent)
                tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, local_files.FILE_MODE)
            except FileNotFoundError:
                continue  # a concurrent delete pruned the directory just now; recreate it
            except OSError as exc:
                raise self._os_error("writing", key, exc) from exc
            try:
                os.fchmod(fd, local_files.FILE_MODE)  # the umask may have taken bits away
            except OSError as exc:
                os.close(fd)
                local_files.unlink_quietly(tmp)
                raise self._os_error("writing", key, exc) from exc
            return fd, tmp
        raise StorageError(
            f"tier '{self.name}': could not create the directory for '{key}' under {self.root}: "
            "it kept disappearing",
            "another process is deleting under this tier at the same time; retry the upload",
        )

    def _make_dirs(self, directory: Path) -> None:
        """``mkdir -p`` where every directory created is exactly 0700, root included."""
        missing = []
        while not directory.is_dir():
            missing.append(directory)
            if directory.parent == directory:
                break
            directory = directory.parent
        for d in reversed(missing):
            try:
                os.mkdir(d, local_files.DIR_MODE)
            except FileExistsError:
                if d.is_dir():
                    continue  # created concurrently by another put
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(d)) from None
            os.chmod(d, local_files.DIR_MODE)

    def _walk(self, directory: Path, rel: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as it:
                entries = []
                for entry in it:
                    if entry.name.startswith("."):
                        continue  # in-flight temp files and anything else not a key
                    if entry.is_dir(follow_symlinks=False):
                        # Sorting "name/" keeps siblings in the order of their full keys:
                        # "a-b" < "a/x" because '-' sorts before '/'.
                        entries.append((entry.name + "/", entry))
                    elif entry.is_file(follow_symlinks=False):
                        entries.append((entry.name, entry))
        except (FileNotFoundError, NotADirectoryError):
            return  # no root yet, or pruned by a concurrent delete: nothing stored there
        except OSError as exc:
            raise self._os_error("listing", prefix or "/", exc) from exc
        entries.sort(key=lambda pair: pair[0])
        for sort_name, entry in entries:
            key = f"{rel}/{sort_name}" if rel else sort_name
            if sort_name.endswith("/"):
                if key.startswith(prefix) or prefix.startswith(key):
                    yield from self._walk(Path(entry.path), key[:-1], prefix)
            elif key.startswith(prefix):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted since the directory was read
                except OSError as exc:
                    raise self._os_error("listing", key, exc) from exc
                yield ObjectInfo(key=key, size=st.st_size, modified=local_files.utc(st.st_mtime))

    def _check_free_space(self, key: str, size_hint: int) -> None:
        usage = disk.usage(self.root)
        if usage is None:
            return  # the put itself will report the real problem
        if size_hint > usage.free:
            raise StorageError(
                f"tier '{self.name}': refusing to write '{key}' ({size_hint} bytes) under "
                f"{self.root}: only {usage.free} bytes are free",
                f"free space on the filesystem holding {self.root} or point tier '{self.name}' "
                "at a larger one",
            )

    def _not_found(self, key: str) -> ObjectNotFound:
        return ObjectNotFound(
            f"tier '{self.name}': no object '{key}' under {self.root}",
            "check the key against `backupctl list`; retention may have removed it",
        )

    def _os_error(self, action: str, key: str, exc: OSError) -> StorageError:
        code = errno.errorcode.get(exc.errno or 0, "")
        reason = f"{code} ({exc.strerror})" if code and exc.strerror else str(exc)
        where = f" at {exc.filename}" if exc.filename else ""
        return StorageError(
            f"tier '{self.name}': {action} '{key}' under {self.root} failed{where}: {reason}",
            self._remedy(exc.errno),
        )

    def _remedy(self, err: int | None) -> str:
        return local_files.remedy(err, self.root, self.name)
