"""Runbook: who may do what over HTTP, and the audit log that remembers every call.

viewer reads; operator also backs up and verifies; admin also restores, deletes and
cleans up. A missing or unknown token is 401, a known token with too small a role is
403, and either way nothing happens. Every call, refused ones included, is an ``api``
entry in the audit log under ``api:<token name>`` (``api:anonymous`` without one).
"""

from __future__ import annotations

import pytest

from api_server import ApiServer, api_table, make_tokens
from backup_tasks.records.catalog import Catalog
from conftest import write_config
from test_sqlite_backup import make_app_db

ROLES = ("viewer", "operator", "admin")


@pytest.fixture(scope="module")
def api(tmp_path_factory, session_keys):
    base = tmp_path_factory.mktemp("roles")
    make_app_db(base / "app.db", rows=50)
    (base / "restore").mkdir()
    tokens = make_tokens()
    cfg = write_config(base / "targets.toml", session_keys,
                       targets=f'[targets.app]\nkind = "sqlite"\npath = "{base / "app.db"}"\n'
                               + api_table(tokens, restore_roots=[base / "restore"]))
    server = ApiServer(cfg, tokens, base / "api.log")
    server.base = base
    yield server
    server.stop()


def test_each_role_may_call_exactly_its_endpoints_and_every_call_is_audited(api):
    admin = api.client("admin")
    doomed, kept = (admin.post("/backups", json={"target": "app"}).json()["id"] for _ in range(2))
    catalog = Catalog(f"sqlite:///{api.base / 'state' / 'catalog.db'}")
    audited_before = len(catalog.audit(action="api"))

    # (least role, method, path, body, status when allowed)
    endpoints = [
        ("viewer", "GET", "/backups", None, 200),
        ("viewer", "GET", f"/backups/{kept}", None, 200),
        ("viewer", "GET", f"/runs/{kept}", None, 200),
        ("viewer", "GET", "/targets", None, 200),
        ("viewer", "GET", "/health", None, 200),
        ("operator", "POST", "/backups", {"target": "app"}, 202),
        ("operator", "POST", f"/backups/{kept}/verify", None, 200),
        ("admin", "POST", f"/backups/{kept}/restore", {"destination": str(api.base / "restore" / "x.db"), "dry_run": True}, 200),
        ("admin", "DELETE", f"/backups/{doomed}", None, 200),
        ("admin", "POST", "/cleanup", {"dry_run": True}, 200),
    ]
    calls = []  # (actor, status) of every request, in order
    for role in ROLES:
        client = api.client(role)
        for least, method, path, body, allowed in endpoints:
            response = client.request(method, path, json=body)
            expected = allowed if ROLES.index(role) >= ROLES.index(least) else 403
            assert response.status_code == expected, (role, method, path, response.text)
            if expected == 403:
                assert response.json()["error"]["type"] == "Forbidden" and f"'{least}'" in response.json()["error"]["message"]
            calls.append((f"api:{role}", expected))
    for least, method, path, body, allowed in endpoints:
        for client in (api.client(None), api.client(None, token="bt_not-a-token-anyone-was-given")):
            response = client.request(method, path, json=body)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            calls.append(("api:anonymous", 401))
    assert api.client(None, token=api.tokens["admin"] + "x").get("/targets").status_code == 401
    calls.append(("api:anonymous", 401))

    # The refused calls changed nothing: only the admin's delete deleted, and only it.
    assert admin.get(f"/backups/{doomed}").json()["status"] == "deleted"
    assert admin.get(f"/backups/{kept}").json()["status"] == "verified"
    calls.append(("api:admin", 200))
    calls.append(("api:admin", 200))

    entries = list(reversed(catalog.audit(action="api")))[audited_before:]
    assert [(e.actor, e.detail["status"]) for e in entries] == calls
    outcomes = {(e.detail["status"], e.outcome) for e in entries}
    assert outcomes <= {(200, "ok"), (202, "ok"), (401, "refused"), (403, "refused")}
    assert all(e.detail["path"].startswith("/api/v1/") and e.detail["method"] for e in entries)
    assert next(e for e in entries if e.detail["method"] == "DELETE" and e.actor == "api:admin").backup_id == doomed
    # and the domain entries name the token too
    assert [(e.actor, e.outcome) for e in catalog.audit(action="delete")] == [("api:admin", "ok")]
    assert {e.actor for e in catalog.audit(action="restore")} == {"api:admin"}
    # No token value is ever written down.
    for token in api.tokens.values():
        assert token not in (api.base / "api.log").read_text()
        assert all(token not in str(e.detail) for e in entries)
