"""Delivery through apprise: one URL per channel (mailto://, slack://, msteams://, json:// ...).

Each URL is tried on its own, so one dead channel neither hides the others nor fails
anything: ``deliver`` never raises, and says per channel whether it worked. A channel is
named in logs only in apprise's privacy form (passwords and tokens masked).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("backup_tasks.alerts")


@dataclass(frozen=True)
class ChannelResult:
    channel: str  # the URL with its secrets masked
    ok: bool
    error: str = ""


def deliver(urls, *, title: str, body: str, level: str, html: bool = False,
            attachments: list[Path] | None = None) -> list[ChannelResult]:
    """Send one notification to every URL; returns what happened on each (never raises)."""
    results = []
    for url in urls:
        try:
            results.append(_deliver_one(url, title=title, body=body, level=level, html=html, attachments=attachments))
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the caller
            results.append(ChannelResult(_scheme_only(url), False, f"{type(exc).__name__} in the notification plugin"))
    return results


def _deliver_one(url: str, *, title: str, body: str, level: str, html: bool, attachments) -> ChannelResult:
    import apprise

    # Memory-only persistent store: a worker must not write apprise caches to its home directory.
    asset = apprise.AppriseAsset(app_id="backup-tasks", app_desc="backup-tasks alerts", storage_mode="memory")
    server = apprise.Apprise.instantiate(url, asset=asset, suppress_exceptions=True)
    if not server:
        return ChannelResult(_scheme_only(url), False,
                             "not a usable apprise URL (unknown service or missing parts): see https://github.com/caronc/apprise/wiki")
    channel = server.url(privacy=True).split("?", 1)[0]  # apprise's defaults in the query say nothing
    box = apprise.Apprise(asset=asset)
    box.add(server)
    attach = None
    if attachments:
        attach = apprise.AppriseAttachment(asset=asset)
        for path in attachments:
            attach.add(str(path))
    ok = box.notify(body=body, title=title, notify_type=_TYPES[level](apprise),
                    body_format=apprise.NotifyFormat.HTML if html else apprise.NotifyFormat.TEXT, attach=attach)
    return ChannelResult(channel, bool(ok), "" if ok else "the service did not accept the notification (see the apprise log lines above)")


_TYPES = {
    "failure": lambda a: a.NotifyType.FAILURE,
    "warning": lambda a: a.NotifyType.WARNING,
    "success": lambda a: a.NotifyType.SUCCESS,
    "info": lambda a: a.NotifyType.INFO,
}


def _scheme_only(url: str) -> str:
    return (url.split("://", 1)[0] + "://...") if isinstance(url, str) and "://" in url else "<invalid URL>"
