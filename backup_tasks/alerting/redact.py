"""Keep secrets out of alert text: whatever reaches a mailbox or a chat channel is public.

Messages are written not to carry secrets in the first place (errors name references,
never values, and are masked by ``backup_tasks.redaction`` when made). This is the
second line: before an alert leaves, every value that a credential reference of the
config resolves to on this host and every value of an environment variable whose name
says it is secret (each in any percent-encoding), the password part of any URL
(``scheme://user:password@host``, up to the last ``@`` before the host), the value of any
secret-named pair (``password=x``, ``PGPASSWORD=x``, ``aws_secret_access_key = x``,
``'password': 'x'``, quoted or not) and a bearer token or ``Authorization:`` value are
replaced by ``***``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from backup_tasks.redaction import MASK, MIN_SECRET_LEN as _MIN_SECRET_LEN, URL_PASSWORD_RE as _URL_PASSWORD_RE, redact

_SECRET_ENV_RE = re.compile(r"PASS|PWD|SECRET|TOKEN|KEY|CREDENTIAL|AUTH|PRIVATE", re.IGNORECASE)
_LOCATION_ENV_RE = re.compile(r"_(FILE|DIR|PATH|SOCK)$", re.IGNORECASE)
#: a secret-named key (PGPASSWORD, aws_secret_access_key, "password" in a dict), then its value, quoted or not;
#: not where a secret is (password_file, ...), nor a plural ("tokens: 5")
_PAIR_RE = re.compile(r"""(?P<key>(?<![A-Za-z0-9])[\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key)"""
                      r"""(?:[_.-](?!file|dir|path)[\w.-]*)?['"]?\s*[=:]\s*)"""
                      r"""(?:(?P<q>['"])(?P<quoted>[^'"]*)(?P=q)|(?P<value>[^\s,;&'"}\]]+))""", re.IGNORECASE)
_BEARER_RE = re.compile(r"(?P<head>\bauthorization\s*[=:]\s*(?:(?:bearer|basic|token|digest)\s+)?|\bbearer\s+)"
                        r"(?P<value>[^\s,;'\"]+)", re.IGNORECASE)


class Redactor:
    """Masks known secret values and secret-shaped fragments in text."""

    def __init__(self, secrets: set[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted((s for s in secrets if len(s) >= _MIN_SECRET_LEN), key=len, reverse=True)

    @classmethod
    def for_config(cls, config=None, environ: dict[str, str] | None = None) -> "Redactor":
        return cls(_config_secrets(config) | _environment_secrets(os.environ if environ is None else environ))

    def __call__(self, text: str | None) -> str:
        if not text:
            return text or ""
        text = redact(text, self._secrets)
        text = _BEARER_RE.sub(lambda m: f"{m['head']}{MASK}", text)
        return _PAIR_RE.sub(lambda m: f"{m['key']}{m['q']}{MASK}{m['q']}" if m["q"] else f"{m['key']}{MASK}", text)


def _environment_secrets(environ) -> set[str]:
    # *_FILE / *_DIR / *_PATH and absolute paths name where a secret is, which an operator needs to read.
    return {value for name, value in environ.items()
            if value and _SECRET_ENV_RE.search(name) and not _LOCATION_ENV_RE.search(name) and not value.startswith("/")}


def _config_secrets(config) -> set[str]:
    """What the config's credential references resolve to here (nothing leaves this function)."""
    if config is None:
        return set()
    refs: list[str] = []
    for target in config.targets.values():
        refs += [r for r in (target.password, (target.drill or {}).get("password")) if isinstance(r, str)]
    for tier in config.tiers.values():
        if tier.credentials:
            kind, _, name = tier.credentials.partition(":")
            if kind == "env":  # an S3 credential prefix: NAME_ACCESS_KEY_ID, NAME_SECRET_ACCESS_KEY, ...
                refs += [f"env:{name}_{part}" for part in ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "SESSION_TOKEN")]
            else:
                refs.append(tier.credentials)
    out: set[str] = set()
    for ref in refs:
        kind, _, name = ref.partition(":")
        if kind == "env":
            if os.environ.get(name):
                out.add(os.environ[name])
        elif kind == "file":
            try:
                text = Path(name).read_text()
            except OSError:
                continue
            out.add(text.strip())
            for line in text.splitlines():  # name = value files (S3 credentials)
                out.add(line.partition("=")[2].strip() if "=" in line else line.strip())
    for url in getattr(config.settings, "alerts", ()) + getattr(config.settings, "report_recipients", ()):
        match = _URL_PASSWORD_RE.search(url)
        if match:
            out.add(match["pw"])
    out.discard("")
    return out
