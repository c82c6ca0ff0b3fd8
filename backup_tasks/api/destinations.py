"""Where an HTTP restore may write: strictly below one of the configured restore roots.

A destination is refused unless it is absolute, has no ``..`` component, and, with
every symlink that exists resolved (os.path.realpath), still lies strictly below a
root. So ``/srv/restore/../etc`` and ``/srv/restore/link-to-etc/x`` are both refused,
and a root itself is refused too (a forced restore would replace the whole root).
The restore then writes into a private sibling of the destination and renames
(restore.py), never through a symlink inside the tree.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from backup_tasks.api.errors import DestinationRefused


def check(destination: str, roots: tuple[Path, ...]) -> Path:
    """The resolved destination, or DestinationRefused naming the rule it broke."""
    listed = ", ".join(str(r) for r in roots)
    if not roots:
        raise DestinationRefused("restores over the API are disabled: no restore_roots in the [api] table",
                                 'add restore_roots = ["/srv/restore"] to [api], or restore with backupctl on the host')
    if "\x00" in destination:
        raise DestinationRefused("destination contains a NUL byte", "send a plain absolute path")
    path = PurePosixPath(destination)
    if not path.is_absolute():
        raise DestinationRefused(f"destination '{destination}' is not an absolute path",
                                 f"give a path below one of the restore roots: {listed}")
    if ".." in path.parts:
        raise DestinationRefused(f"destination '{destination}' contains '..' (path traversal)",
                                 f"give a path below one of the restore roots without '..': {listed}")
    resolved = Path(os.path.realpath(destination))
    real_roots = [Path(os.path.realpath(root)) for root in roots]
    if resolved in real_roots:  # also a root nested in another: a forced restore would replace the whole root
        raise DestinationRefused(f"destination '{destination}' is a restore root itself",
                                 f"restore into a new directory below it: {listed}")
    for real_root in real_roots:
        if real_root in resolved.parents:
            return resolved
    escaped = f" (it resolves to {resolved} through a symlink)" if str(resolved) != os.path.normpath(destination) else ""
    raise DestinationRefused(f"destination '{destination}' is not below a restore root{escaped}",
                             f"restore into a new directory below one of: {listed}")
