"""The DR readiness report: one page that answers "are we recoverable right now?".

Per target: the last backup, the last verification, the last restore drill with its
measured restore time (RTO evidence), RPO compliance, the success rate over the window
(``report_days``, 30) and the storage used per tier, plus a verdict with its reasons.
Per encryption key: its role, its age (a current key older than ``key_max_age_days`` is
due for rotation) and the backups and objects still on keys that are no longer current.
``build`` returns plain data (the ``--json`` document); ``render_html`` adds plots drawn
with matplotlib's Agg backend (no display needed) and embedded as base64 PNG, so the
page is one self-contained file that a mail can carry. ``mail`` sends it through the
alert channels (or ``report_recipients``): the weekly ``backup.report`` task.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from backup_tasks import alerting
from backup_tasks.ops import readiness
from backup_tasks.ops.keys import ages as key_age
from backup_tasks.policy.readiness import TargetState
from backup_tasks.timefmt import iso, parse
from backup_tasks.units import human_size

log = logging.getLogger(__name__)

TEMPLATE = "report.html"


def build(rt, now: datetime | None = None, days: int | None = None) -> dict:
    """The report as plain JSON-able data."""
    now = now or datetime.now(timezone.utc)
    days = days or rt.settings.report_days
    states = readiness.assess(rt, now, days=days)
    conditions = rt.catalog.open_conditions()
    targets = [_target(st) for st in states]
    return {
        "generated_at": iso(now),
        "window_days": days,
        "config": rt.config.file,
        "summary": {"targets": len(targets), "ready": sum(1 for t in targets if t["ready"]),
                    "at_risk": [t["target"] for t in targets if not t["ready"]]},
        "targets": targets,
        "open_conditions": [{"kind": c.kind, "target": c.target, "tier": c.tier, "since": iso(c.opened_at)} for c in conditions],
        "encryption_keys": key_age.report(rt, now),
    }


def _target(st: TargetState) -> dict:
    run, ok, drill = st.last_run, st.last_verified, st.last_drill
    return {
        "target": st.target, "kind": st.kind, "host": st.host,
        "ready": st.ready, "problems": st.problems,
        "last_backup": None if run is None else {
            "id": run.id, "status": run.status, "created_at": iso(run.created_at), "size_stored": run.size_stored,
            "duration_seconds": run.duration_seconds, "error": run.error},
        "last_verify": None if ok is None else {
            "id": ok.id, "created_at": iso(ok.created_at), "verified_at": iso(ok.verified_at)},
        "last_drill": None if drill is None else {
            "drill_id": drill.id, "backup_id": drill.backup_id, "result": drill.result,
            "finished_at": iso(drill.finished_at or drill.started_at), "rto_seconds": drill.restore_seconds},
        "rpo": {"hours": st.rpo_hours, "compliant": st.rpo_compliant,
                "data_age_hours": round(st.data_age_seconds / 3600, 2) if st.data_age_seconds is not None else None},
        "success_rate": {"window_days": st.window_days, "successes": st.successes, "attempts": st.attempts,
                         "ratio": round(st.success_rate, 4) if st.success_rate is not None else None},
        "storage": dict(sorted(st.storage_by_tier.items())),
        "runs_by_status": st.runs_by_status,
    }


# HTML --------------------------------------------------------------------------

def render_html(rt, data: dict, now: datetime | None = None) -> str:
    """The report page: the table, the open conditions and three plots, self-contained."""
    import jinja2  # only rendering needs it: build() (--json) and processes that merely import this module skip it

    now = now or datetime.now(timezone.utc)
    runs = rt.catalog.runs_since(now - timedelta(days=data["window_days"]))
    names = [t["target"] for t in data["targets"]]
    env = jinja2.Environment(loader=jinja2.PackageLoader("backup_tasks.ops", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)
    env.filters["size"] = human_size
    env.filters["seconds"] = _seconds
    env.filters["when"] = _when
    env.filters["percent"] = lambda r: "-" if r is None else f"{r * 100:.0f}%"
    return env.get_template(TEMPLATE).render(report=data, plots=plots(runs, names, data["window_days"]))


def write_html(rt, data: dict, path: str | os.PathLike, now: datetime | None = None) -> None:
    """Write the page for ``data`` to ``path`` (``backupctl report --html``); OSError if it cannot."""
    Path(path).write_text(render_html(rt, data, now), encoding="utf-8")


def plots(runs, targets: list[str], days: int) -> dict[str, str]:
    """Three PNG plots as base64: stored size and duration per target over time, and a success/failure timeline."""
    # matplotlib takes about half a second to import, so only a process that draws pays for it;
    # the object API draws on Agg without pyplot's global state
    from matplotlib.figure import Figure

    by_target = {t: [r for r in runs if r.target == t] for t in targets}
    out = {}

    def finish(fig) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
        return base64.b64encode(buf.getvalue()).decode("ascii")

    stored = {t: good_stored(rs) for t, rs in by_target.items()}
    biggest = max((r.size_stored for rs in stored.values() for r in rs), default=0)
    unit, scale = next(((u, s) for u, s in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)) if biggest >= s), ("bytes", 1))
    fig = Figure(figsize=(10, 3.6))
    ax = fig.subplots()
    for t, rs in stored.items():
        if rs:
            ax.plot([r.created_at for r in rs], [r.size_stored / scale for r in rs], marker="o", markersize=3, label=t)
    ax.set_ylim(0, max(biggest / scale * 1.15, 1e-9))  # from zero: small wobbles must not look like cliffs
    _frame(fig, ax, f"Stored size per backup ({unit}), last {days} days", unit, any(stored.values()))
    out["size"] = finish(fig)

    timed = {t: [r for r in rs if r.duration_seconds is not None] for t, rs in stored.items()}
    fig = Figure(figsize=(10, 3.6))
    ax = fig.subplots()
    for t, rs in timed.items():
        if rs:
            ax.plot([r.created_at for r in rs], [r.duration_seconds for r in rs], marker="o", markersize=3, label=t)
    longest = max((r.duration_seconds for rs in timed.values() for r in rs), default=0)
    ax.set_ylim(0, max(longest * 1.15, 1e-9))
    _frame(fig, ax, f"Backup duration (seconds), last {days} days", "seconds", any(timed.values()))
    out["duration"] = finish(fig)

    fig = Figure(figsize=(10, 0.9 + 0.45 * max(len(targets), 1)))
    ax = fig.subplots()
    styles = {"success": ("o", "#2e7d32"), "failed": ("X", "#c62828"), "unverified": ("^", "#ef6c00"), "running": ("s", "#9e9e9e")}
    seen = set()
    for y, t in enumerate(targets):
        for r in by_target[t]:
            outcome = _outcome(r)
            marker, colour = styles[outcome]
            ax.scatter([r.created_at], [y], marker=marker, color=colour, s=46, zorder=3,
                       label=outcome if outcome not in seen else None)
            seen.add(outcome)
    ax.set_yticks(range(len(targets)), targets)
    ax.set_ylim(-0.7, max(len(targets), 1) - 0.3)
    _frame(fig, ax, f"Runs: successes and failures, last {days} days", None, bool(seen))
    out["timeline"] = finish(fig)
    return out


def good_stored(runs) -> list:
    """The runs the size and duration plots show: stored and not failed (uploaded, verified, or deleted after verified).

    A failed run's size is what it got to (a partial upload) and its time says when it
    failed, not how big or how long a backup is.
    """
    return [r for r in runs if r.size_stored is not None and (
        r.status in ("uploaded", "verified") or (r.status == "deleted" and r.verified_at is not None))]


def _outcome(run) -> str:
    if run.verified_at is not None:
        return "success"
    if run.status == "failed":
        return "failed"
    if run.status == "running":
        return "running"
    return "unverified"


def _frame(fig, ax, title: str, ylabel: str | None, has_data: bool) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter  # as in plots(): only drawing loads matplotlib

    ax.set_title(title, loc="left", fontsize=11)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if has_data:
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        ax.legend(loc="upper left", fontsize=8, frameon=False, ncols=4)
    else:
        ax.text(0.5, 0.5, "no runs in this window", transform=ax.transAxes, ha="center", va="center", color="#777")
    fig.tight_layout()


def _when(text: str | None) -> str:
    """ISO time from the report data as people read it: 2024-07-01 02:00 UTC."""
    when = parse(text)
    return when.strftime("%Y-%m-%d %H:%M UTC") if when else "-"


def _seconds(s) -> str:
    if s is None:
        return "-"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


# mail --------------------------------------------------------------------------

def mail(rt, now: datetime | None = None) -> dict:
    """Send the HTML report through apprise (HTML body, the page attached); returns what happened."""
    urls = rt.settings.report_recipients or rt.settings.alerts
    now = now or datetime.now(timezone.utc)
    data = build(rt, now)
    if not urls:
        log.warning("report not mailed: neither report_recipients nor alerts are set")
        return {"sent": False, "reason": "no report_recipients or alerts configured", "summary": data["summary"]}
    html = render_html(rt, data, now)
    summary = data["summary"]
    alert = alerting.Alert(
        kind="report", level="info" if not summary["at_risk"] else "warning",
        title=f"DR readiness report: {summary['ready']} of {summary['targets']} targets ready",
        what="", next_step="", at=now)
    with tempfile.TemporaryDirectory(prefix="report-", dir=rt.staging_root()) as tmp:
        page = Path(tmp) / f"dr-report-{now:%Y-%m-%d}.html"
        page.write_text(html, encoding="utf-8")
        delivery = alerting.send(alert, urls, settings=rt.settings, config=rt.config, catalog=rt.catalog,
                                 html_body=html, attachments=[page], rate_limit=False)
    return {"sent": delivery.sent, "channels": [{"channel": c.channel, "ok": c.ok} for c in delivery.channels],
            "summary": summary, "generated_at": data["generated_at"]}
