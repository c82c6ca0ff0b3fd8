"""GET /health: can this server reach the broker, the catalog and every storage tier?

Each component is probed read-only and in parallel, each bounded by ``PROBE_SECONDS``,
so a black-holed S3 endpoint makes the answer slow by seconds, not minutes, and never
writes anything (a probe that wrote would itself need cleaning up). A tier is probed
through its Probe capability, which the retry wrapper passes on without retrying:
health reports what is true now, retries are for backups.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout

from kombu import Connection
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy import text

from backup_tasks.errors import BackupError
from backup_tasks.ops.runtime import Runtime
from backup_tasks.storage.capabilities import Probe

PROBE_SECONDS = 5.0
OK, DOWN, EMBEDDED = "ok", "unavailable", "embedded"


def check(rt: Runtime) -> dict:
    """``{"status": "ok"|"unavailable", "components": [...]}``; ok only if every component is."""
    probes = [("broker", "broker", lambda: _broker(rt.settings.broker_url))] if rt.settings.broker_url else []
    backend = rt.settings.result_backend
    if backend and backend != rt.settings.broker_url:
        probes.append(("result_backend", "result_backend", lambda: _broker(backend)))
    probes.append(("catalog", "catalog", lambda: _catalog(rt)))
    probes += [(name, "tier", lambda tier=tier: _tier(rt, tier)) for name, tier in rt.config.tiers.items()]
    components = []
    if not rt.settings.broker_url:
        components.append({"name": "broker", "kind": "broker", "status": EMBEDDED,
                           "detail": "no broker configured: tasks run in this process (embedded default)"})
    pool = ThreadPoolExecutor(max_workers=len(probes), thread_name_prefix="health")
    futures = [(name, kind, pool.submit(probe)) for name, kind, probe in probes]
    deadline = time.monotonic() + PROBE_SECONDS  # one bound for all: ten dead tiers still answer in PROBE_SECONDS
    for name, kind, future in futures:
        try:
            status, detail = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            status, detail = DOWN, f"no answer within {PROBE_SECONDS:.0f}s"
        except Exception as exc:  # noqa: BLE001 - a probe's failure is its component's status
            status, detail = DOWN, _describe(exc)
        components.append({"name": name, "kind": kind, "status": status, "detail": detail})
    pool.shutdown(wait=False)  # a hung probe must not hold the answer
    healthy = all(c["status"] in (OK, EMBEDDED) for c in components)
    return {"status": OK if healthy else DOWN, "components": components}


def _describe(exc: Exception) -> str:
    return exc.message if isinstance(exc, BackupError) else f"{type(exc).__name__}: {exc}"


def _broker(url: str) -> tuple[str, str]:
    shown = maybe_sanitize_url(url)
    with Connection(url, connect_timeout=PROBE_SECONDS, transport_options={"socket_connect_timeout": PROBE_SECONDS}) as conn:
        try:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=PROBE_SECONDS)
        except Exception as exc:  # noqa: BLE001
            return DOWN, f"{shown}: {type(exc).__name__}: {exc}"
    return OK, f"{shown} answers"


def _catalog(rt: Runtime) -> tuple[str, str]:
    catalog = rt.catalog
    with catalog.engine.connect() as conn:
        conn.execute(text("select 1"))
    return OK, f"{catalog.engine.url.render_as_string(hide_password=True)} answers"


def _tier(rt: Runtime, tier) -> tuple[str, str]:
    storage = rt.storage(tier)
    if isinstance(storage, Probe):  # passed on once by the retry wrapper: never retried
        return OK, storage.probe(PROBE_SECONDS)
    next(iter(storage.list("")), None)  # a kind without a probe of its own: one listing call
    return OK, "listing answers"
