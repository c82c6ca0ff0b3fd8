"""Runbook: a stranger floods the HTTP API without a token; the audit log records a trickle and the count.

Every refused call still gets its 401, and every call with a token is still audited;
only the rows for refused anonymous calls are rate-limited, and the next row written
says how many were left out.
"""

from __future__ import annotations

import time

from api_server import ApiServer, api_table, make_tokens
from backup_tasks.defaults import API_ANONYMOUS_AUDIT_BURST, API_ANONYMOUS_AUDIT_EVERY_SECONDS
from backup_tasks.records.catalog import Catalog
from conftest import write_config

FLOOD = 300


def test_a_flood_of_anonymous_calls_writes_a_bounded_number_of_audit_rows_that_count_the_rest(tmp_path, session_keys):
    tokens = make_tokens(("viewer",))
    cfg = write_config(tmp_path / "targets.toml", session_keys,
                       targets='[targets.t]\nkind = "files"\npaths = ["/etc/hostname"]\n' + api_table(tokens))
    server = ApiServer(cfg, tokens, tmp_path / "api.log")
    try:
        stranger, viewer = server.client(None), server.client("viewer")
        assert all(stranger.get("/targets").status_code == 401 for _ in range(FLOOD))
        for _ in range(5):
            assert viewer.get("/targets").status_code == 200
        time.sleep(API_ANONYMOUS_AUDIT_EVERY_SECONDS + 0.5)  # the bucket earns one more row
        assert stranger.get("/backups").status_code == 401
    finally:
        server.stop()

    catalog = Catalog(f"sqlite:///{tmp_path / 'state' / 'catalog.db'}")
    anonymous = [e for e in catalog.audit(action="api") if e.actor == "api:anonymous"]
    viewers = [e for e in catalog.audit(action="api") if e.actor == "api:viewer"]
    assert len(viewers) == 5  # calls with a token are all audited
    assert API_ANONYMOUS_AUDIT_BURST <= len(anonymous) < API_ANONYMOUS_AUDIT_BURST + 10, len(anonymous)
    assert all(e.outcome == "refused" and e.detail["status"] == 401 for e in anonymous)
    # Nothing is lost: the rows written plus the counts they carry add up to every refused call.
    assert len(anonymous) + sum(e.detail.get("suppressed_before", 0) for e in anonymous) == FLOOD + 1
    newest = anonymous[0]
    assert newest.detail["path"] == "/api/v1/backups" and newest.detail["suppressed_before"] > 0
    assert "counting the rest" in (tmp_path / "api.log").read_text()
