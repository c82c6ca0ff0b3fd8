"""A client tool's ``--version``, asked when the dump begins and read once it is needed.

Both database dumps record the tool's version in the manifest, and PostgreSQL's also
refuses a pg_dump older than the server. Asked first and waited for, the question (a
process started and run to its end, 35-40 ms for mariadb-dump here) sat in front of the
connection and the dump; started first and answered after the connection is made, it
costs nothing there.
"""

from __future__ import annotations

import subprocess


class VersionAsked:
    """``path --version``, started now and answered later."""

    def __init__(self, path: str, env: dict | None = None) -> None:
        self.argv = [path, "--version"]
        self.child = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def answer(self, *, check: bool = True) -> str:
        """The tool's words; with ``check`` a failing tool raises CalledProcessError, else its (maybe empty) output."""
        out, err = self.child.communicate()
        if check and self.child.returncode != 0:
            raise subprocess.CalledProcessError(self.child.returncode, self.argv, out, err)
        return out.strip()

    def discard(self) -> None:
        """Reap the child if nobody asked for the answer (the caller failed first); a no-op after ``answer``."""
        if self.child.returncode is None:
            self.child.kill()
            self.child.communicate()
