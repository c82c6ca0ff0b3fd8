"""The environment an external tool (tar, pg_dump, mariadb-dump, psql) runs with.

A worker's environment holds secrets: targets' passwords behind ``env:`` references, S3
keys, the catalog and broker URLs. A child inherits whatever it is given and shows it in
/proc/<pid>/environ, so a tool gets an allowlist: locale, PATH, HOME, time zone, TLS and
Kerberos file locations, and the database clients' own settings (PG*, MYSQL_*, MARIADB_*)
minus their password variables.
"""

from __future__ import annotations

import os

_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "LD_LIBRARY_PATH",
                    # where TLS roots and a Kerberos ticket cache are: paths, not secrets
                    "SSL_CERT_FILE", "SSL_CERT_DIR", "KRB5CCNAME", "KRB5_CONFIG"})
_PREFIXES = ("LC_", "PG", "MYSQL_", "MARIADB_")
_PASSWORD_VARIABLES = frozenset({"PGPASSWORD", "MYSQL_PWD"})


def tool_env(*, secret: str | None = None, **overrides: str) -> dict[str, str]:
    """The allowlisted part of the worker's environment, without any variable whose value is
    ``secret``, then ``overrides`` on top."""
    env = {k: v for k, v in os.environ.items()
           if (k in _NAMES or k.startswith(_PREFIXES)) and k not in _PASSWORD_VARIABLES and not (secret and v == secret)}
    env.update(overrides)
    return env
