"""From event to delivered alert: word it, rate-limit it, mask secrets, send it, log what failed.

``on_event`` is called, through the notifier that ops/runtime.py gives ``events.emit``,
right after an event is recorded, in whatever process emitted it (a worker, the embedded
chain, the CLI, the API, the watchdog), with that process's settings and targets. It never
raises: alerting is best effort on top of the catalog, which holds every event anyway.
A channel that fails is logged and recorded as an ``alert.channel_failed`` event
(written directly, so a dead channel cannot set off alerts about itself).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from backup_tasks.records import events
from backup_tasks.alerting import channels, messages
from backup_tasks.alerting.messages import Alert
from backup_tasks.alerting.redact import Redactor

log = logging.getLogger("backup_tasks.alerts")

CHANNEL_FAILED = "alert.channel_failed"


@dataclass
class Delivery:
    """What became of one alert: sent (to which channels, which failed) or held back by the rate limit."""

    alert: Alert
    sent: bool = False
    suppressed: bool = False
    channels: list[channels.ChannelResult] = field(default_factory=list)

    @property
    def failed(self) -> list[channels.ChannelResult]:
        return [c for c in self.channels if not c.ok]


def on_event(catalog, *, settings, config, kind: str, severity: str, message: str, target: str | None, host: str | None,
             backup_id: str | None, detail: dict | None) -> Delivery | None:
    """Alert on one just-recorded event, if ``settings`` has alert URLs and the event is worth one.

    ``config`` (the targets file) words a tier's alert with the targets that store there.
    """
    if kind == CHANNEL_FAILED:
        return None
    if kind not in messages.WORDING and severity not in ("error", "warning"):
        return None  # informational events of other kinds are for the catalog only
    if not settings.alerts:
        return None
    alert = messages.from_event(kind=kind, severity=severity, message=message, target=target, host=host,
                                backup_id=backup_id, detail=detail, config=config)
    # A watchdog condition is emitted once per change of state (opened, resolved): each change is news,
    # even a mount that comes back and goes again within the window.
    condition = kind.removesuffix(events.RESOLVED) in events.WATCHDOG_CONDITIONS
    return send(alert, settings.alerts, settings=settings, config=config, catalog=catalog, rate_limit=not condition)


def send(alert: Alert, urls, *, settings, config=None, catalog=None, html_body: str | None = None,
         attachments: list[Path] | None = None, rate_limit: bool = True) -> Delivery:
    """Rate-limit (shared through the catalog), mask secrets, deliver; never raises.

    An alert that reached no channel gives its rate-limit claim back, so it does not
    count as sent: the next identical alert goes out (with the count of those held back).
    """
    delivery = Delivery(alert)
    if not urls:
        return delivery
    claim = None
    if rate_limit and catalog is not None and settings.alert_repeat_minutes > 0:
        try:
            claim = catalog.claim_alert(alert.dedupe_key, kind=alert.kind, target=alert.target, now=alert.at,
                                        window_seconds=settings.alert_repeat_minutes * 60)
        except Exception:  # noqa: BLE001 - better one alert too many than none: send anyway
            log.exception("alert rate limit unavailable (catalog); sending %s without it", alert.kind)
        if claim is not None and not claim.send:
            log.info("alert %s for %s held back: an identical one went out within %s minutes", alert.kind, alert.target,
                     settings.alert_repeat_minutes)
            delivery.suppressed = True
            return delivery
    redact = Redactor.for_config(config)
    title = redact(alert.subject)
    body = redact(html_body) if html_body is not None else redact(
        alert.body(suppressed=claim.suppressed if claim else 0, since=claim.since if claim else None))
    delivery.channels = channels.deliver(urls, title=title, body=body, level=alert.level, html=html_body is not None,
                                         attachments=attachments)
    delivery.sent = any(c.ok for c in delivery.channels)
    if claim is not None and claim.send and not delivery.sent:
        # Nobody was told: the claim must not hold back the next identical alert for a whole window.
        try:
            catalog.release_alert(alert.dedupe_key, claim)
        except Exception:  # noqa: BLE001
            log.exception("could not release the rate limit of undelivered alert %s", alert.kind)
    for failed in delivery.failed:
        # The failure of a channel is logged, never raised: the backup it reports on is not affected.
        log.error("alert channel %s failed to deliver %s (%s): %s", failed.channel, alert.kind, alert.title, failed.error)
        if catalog is not None:
            try:
                catalog.add_event(kind=CHANNEL_FAILED, severity="warning", target=alert.target, host=alert.host,
                                  backup_id=alert.backup_id, message=redact(f"alert channel {failed.channel} failed to "
                                                                            f"deliver {alert.kind}: {failed.error}"),
                                  detail={"channel": failed.channel, "alert_kind": alert.kind})
            except Exception:  # noqa: BLE001
                log.exception("could not record the failure of alert channel %s", failed.channel)
    for ok in delivery.channels:
        if ok.ok:
            log.info("alert %s sent to %s", alert.kind, ok.channel)
    return delivery


def notify_verified(rt, backup_id: str) -> Delivery | None:
    """Success notice for a run whose own verification passed (only with alert_on_success). Never raises."""
    if not (rt.settings.alert_on_success and rt.settings.alerts):
        return None
    try:
        return _notify_verified(rt, backup_id)
    except Exception:  # noqa: BLE001 - the backup is verified; a notice that failed is only logged
        log.exception("could not send the success notice for %s", backup_id)
        return None


def _notify_verified(rt, backup_id: str) -> Delivery | None:
    row = rt.catalog.find(backup_id)
    if row is None:
        return None
    size = f", {row.size_stored:,} bytes stored" if row.size_stored is not None else ""
    took = f" in {row.duration_seconds:.1f}s" if row.duration_seconds is not None else ""
    alert = messages.from_event(kind=events.VERIFIED, severity="info", target=row.target, host=row.host, backup_id=row.id,
                                message=f"backup {row.id} of '{row.target}' was stored and verified{took}{size}",
                                detail={"tier": ", ".join(l.tier for l in row.locations) or None}, config=rt.config)
    return send(alert, rt.settings.alerts, settings=rt.settings, config=rt.config, catalog=rt.catalog)

