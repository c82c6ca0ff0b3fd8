"""Runbook: the HTTP API on a real server (uvicorn on loopback), driven with httpx like a client would.

Back up over HTTP, page through the catalog, show, verify (and catch a tampered copy),
restore into a restore root (and be refused everywhere else), delete (and be refused
the newest verified), clean up, list targets without their secrets, check health, and
send the bad input a careless or hostile client sends.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from api_server import ApiServer, api_table, make_tokens
from conftest import run_cli, write_config
from test_sqlite_backup import make_app_db

DB_SECRET = "pw-api-Xq7-never-in-a-response"


@pytest.fixture(scope="module")
def api(tmp_path_factory, session_keys):
    base = tmp_path_factory.mktemp("api")
    for name in ("app", "pruned", "guarded"):
        make_app_db(base / f"{name}.db")
    tree = base / "uploads"
    (tree / "docs").mkdir(parents=True)
    (tree / "docs" / "a.txt").write_text("first file\n")
    chained = base / "chained"
    (chained / "docs").mkdir(parents=True)
    (chained / "docs" / "a.txt").write_text("in the full\n")
    (base / "restore").mkdir()
    tokens = make_tokens()
    targets = (
        f'[targets.app-sqlite]\nkind = "sqlite"\npath = "{base / "app.db"}"\n'
        f'[targets.uploads]\nkind = "files"\npaths = ["{tree}"]\n'
        f'[targets.chained]\nkind = "files"\npaths = ["{chained}"]\n'
        f'[targets.pruned]\nkind = "sqlite"\npath = "{base / "pruned.db"}"\nretention = {{ keep_last = 1 }}\n'
        f'[targets.guarded]\nkind = "sqlite"\npath = "{base / "guarded.db"}"\npassword = "env:API_TEST_DB_PASSWORD"\n'
        + api_table(tokens, restore_roots=[base / "restore"])
    )
    cfg = write_config(base / "targets.toml", session_keys, targets=targets)
    server = ApiServer(cfg, tokens, base / "api.log", env={"API_TEST_DB_PASSWORD": DB_SECRET})
    server.base, server.config = base, cfg
    yield server
    server.stop()


def back_up(client: httpx.Client, target: str) -> str:
    response = client.post("/backups", json={"target": target})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_a_backup_posted_over_http_is_listed_page_by_page_and_shown(api):
    operator, viewer = api.client("operator"), api.client("viewer")
    ids = []
    for _ in range(3):
        response = operator.post("/backups", json={"target": "app-sqlite", "type": "full"})
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert accepted["status_url"] == f"/api/v1/runs/{accepted['id']}" == response.headers["location"]
        ids.append(accepted["id"])

    # Embedded default: the chain ran inside the request, so the run has ended.
    run = viewer.get(f"/runs/{ids[-1]}").json()
    assert (run["kind"], run["status"], run["stage"], run["progress"]) == ("backup", "verified", "done", None)

    seen, pages, url = [], 0, "/backups?target=app-sqlite&limit=2"
    while url:
        page = viewer.get(url)
        assert page.status_code == 200, page.text
        seen += [item["id"] for item in page.json()["items"]]
        pages += 1
        url = (page.json()["next"] or "").removeprefix("/api/v1")
    assert pages == 2 and len(seen) == len(set(seen)) == 3
    assert seen == ids[::-1]  # newest first, nothing twice, nothing skipped

    assert {i["id"] for i in viewer.get("/backups", params={"status": "verified", "kind": "sqlite"}).json()["items"]} >= set(ids)
    assert not viewer.get("/backups", params={"target": "app-sqlite", "kind": "files"}).json()["items"]
    assert not viewer.get("/backups", params={"target": "app-sqlite", "status": "failed"}).json()["items"]

    shown = viewer.get(f"/backups/{ids[0]}").json()
    assert shown["status"] == "verified" and shown["stage"] == "done" and shown["kind"] == "sqlite"
    assert shown["manifest"]["target"] == "app-sqlite" and shown["locations"][0]["tier"] == "local"
    assert [v["ok"] for v in shown["verifications"]] == [True]


def test_verify_over_http_passes_and_then_catches_a_tampered_copy(api):
    operator = api.client("operator")
    backup_id = back_up(operator, "app-sqlite")
    response = operator.post(f"/backups/{backup_id}/verify")
    assert response.status_code == 200, response.text
    assert response.json()["ok"] is True and response.json()["status"] == "verified"

    stored = api.base / "state" / "store" / "app-sqlite" / backup_id
    artifact = next(p for p in stored.iterdir() if p.name.startswith("data."))
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))

    verdict = operator.post(f"/backups/{backup_id}/verify")
    assert verdict.status_code == 200, verdict.text  # the request worked; the backup did not
    assert verdict.json()["ok"] is False and verdict.json()["status"] == "failed" and verdict.json()["check"]
    assert api.client("viewer").get(f"/backups/{backup_id}").json()["status"] == "failed"


def test_restore_lands_only_below_a_restore_root(api, tmp_path):
    operator, admin = api.client("operator"), api.client("admin")
    backup_id = back_up(operator, "app-sqlite")
    root = api.base / "restore"
    dest = root / "copy.db"

    dry = admin.post(f"/backups/{backup_id}/restore", json={"destination": str(dest), "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json()["dry_run"] is True and not dest.exists()

    done = admin.post(f"/backups/{backup_id}/restore", json={"destination": str(dest)})
    assert done.status_code == 200, done.text
    assert sqlite3.connect(dest).execute("SELECT count(*) FROM orders").fetchone()[0] == 2000

    again = admin.post(f"/backups/{backup_id}/restore", json={"destination": str(dest)})
    assert again.status_code == 409 and again.json()["error"]["type"] == "RestoreRefused"
    assert admin.post(f"/backups/{backup_id}/restore", json={"destination": str(dest), "force": True}).status_code == 200

    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    refused = {
        f"{root}/../escaped.db": "'..'",
        str(tmp_path / "elsewhere.db"): "not below a restore root",
        f"{root}/link/through-symlink.db": "through a symlink",
        "relative.db": "not an absolute path",
        str(root): "is a restore root itself",  # a forced restore would replace all of it
    }
    for destination, reason in refused.items():
        response = admin.post(f"/backups/{backup_id}/restore", json={"destination": destination, "force": True})
        assert response.status_code == 400, (destination, response.text)
        assert response.json()["error"]["type"] == "DestinationRefused" and reason in response.json()["error"]["message"]
    assert list(outside.iterdir()) == [] and not (api.base / "escaped.db").exists()


def test_a_path_component_too_long_for_the_filesystem_is_a_400_and_the_connection_stays_usable(api):
    operator, admin = api.client("operator"), api.client("admin")  # admin: one keep-alive connection for both calls
    backup_id = back_up(operator, "app-sqlite")
    root = api.base / "restore"

    response = admin.post(f"/backups/{backup_id}/restore", json={"destination": f"{root}/{'x' * 300}/copy.db"})
    assert response.status_code == 400, response.text
    assert "path component of 300 bytes" in response.json()["error"]["message"]
    assert admin.get(f"/backups/{backup_id}").status_code == 200  # the next call on the same connection is answered

    into = admin.post(f"/backups/{backup_id}/restore", json={"destination": f"{root}/into-new-dir/"})
    assert into.status_code == 200, into.text
    assert into.json()["restored_to"] == str(root / "into-new-dir" / "app.db")


def test_an_incremental_over_http_restores_selected_paths_through_its_chain_and_shows_its_files(api):
    operator, admin, viewer = api.client("operator"), api.client("admin"), api.client("viewer")
    tree = api.base / "chained"
    prefix = str(tree).lstrip("/")
    full = back_up(operator, "chained")
    (tree / "docs" / "b.txt").write_text("in the incremental\n")
    (tree / "other").mkdir()
    (tree / "other" / "c.txt").write_text("not asked for\n")
    accepted = operator.post("/backups", json={"target": "chained", "type": "incremental", "rehash": True})
    assert accepted.status_code == 202, accepted.text
    inc = accepted.json()["id"]

    shown = viewer.get(f"/backups/{inc}", params={"files": True})
    assert shown.status_code == 200, shown.text
    assert shown.json()["parent_id"] == full and shown.json()["status"] == "verified"
    listed = {e["path"]: e for e in shown.json()["files"]}  # the tree listing: the whole tree at that moment
    assert sorted(p for p, e in listed.items() if e.get("in") == inc) == [
        f"{prefix}/docs/b.txt", f"{prefix}/other/c.txt"]  # the incremental holds only what changed
    assert listed[f"{prefix}/docs/a.txt"]["in"] == full and "files" not in shown.json()["manifest"]["source"]

    dest = api.base / "restore" / "selected"
    body = {"destination": str(dest), "paths": [str(tree / "docs")]}
    dry = admin.post(f"/backups/{inc}/restore", json={**body, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert {f["path"]: f["from"] for f in dry.json()["files_from"]} == {f"{prefix}/docs/a.txt": full,
                                                                      f"{prefix}/docs/b.txt": inc}
    done = admin.post(f"/backups/{inc}/restore", json=body)
    assert done.status_code == 200, done.text
    restored = dest / prefix
    assert sorted(str(p.relative_to(restored)) for p in restored.rglob("*")) == ["docs", "docs/a.txt", "docs/b.txt"]
    assert (restored / "docs" / "a.txt").read_text() == "in the full\n"
    assert (restored / "docs" / "b.txt").read_text() == "in the incremental\n"

    nothing = admin.post(f"/backups/{inc}/restore", json={"destination": str(dest) + "-none", "paths": [str(tree / "nope")]})
    assert nothing.status_code == 400 and "holds nothing at" in nothing.json()["error"]["message"]

    stripped = admin.post(f"/backups/{full}/restore", json={"destination": str(dest) + "-stripped", "strip_source_path": True})
    assert stripped.status_code == 200, stripped.text
    assert (Path(str(dest) + "-stripped") / "docs" / "a.txt").read_text() == "in the full\n"


def test_delete_refuses_the_newest_verified_backup_and_removes_an_older_one(api):
    operator, admin, viewer = api.client("operator"), api.client("admin"), api.client("viewer")
    older, newest = back_up(operator, "uploads"), back_up(operator, "uploads")
    store = api.base / "state" / "store" / "uploads"

    refused = admin.delete(f"/backups/{newest}")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["type"] == "DeleteRefused"
    assert "newest verified backup" in refused.json()["error"]["message"]
    assert (store / newest / "manifest.json").exists()
    # the CLI gives the same refusal, exit code 2
    cli = json.loads(run_cli("delete", newest, "--json", config=api.config, check=2,
                             env={"API_TEST_DB_PASSWORD": DB_SECRET}).stdout)
    assert cli["error"]["type"] == "DeleteRefused"

    deleted = admin.delete(f"/backups/{older}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["status"] == "deleted" and [r["tier"] for r in deleted.json()["removed"]] == ["local"]
    assert not (store / older).exists()
    assert viewer.get(f"/backups/{older}").json()["status"] == "deleted"
    assert admin.delete(f"/backups/{older}").json()["removed"] == []  # idempotent
    assert admin.delete("/backups/uploads-20000101T000000Z-000000").status_code == 404


def test_cleanup_returns_the_plan_and_deletes_only_when_asked(api):
    operator, admin, viewer = api.client("operator"), api.client("admin"), api.client("viewer")
    older, newer = back_up(operator, "pruned"), back_up(operator, "pruned")

    plan = admin.post("/cleanup", json={"target": "pruned"})
    assert plan.status_code == 200, plan.text
    assert plan.json()["dry_run"] is True and plan.json()["would_delete_backups"] == [older]
    reasons = {d["backup_id"]: d["reasons"] for d in plan.json()["decisions"]}
    assert any("keep_last 1" in r or "newest verified" in r for r in reasons[newer]) and reasons[older]
    assert viewer.get(f"/backups/{older}").json()["status"] == "verified"  # a plan deletes nothing

    applied = admin.post("/cleanup", json={"target": "pruned", "dry_run": False})
    assert applied.status_code == 200 and applied.json()["deleted_backups"] == [older]
    assert viewer.get(f"/backups/{older}").json()["status"] == "deleted"
    assert admin.post("/cleanup", json={"target": "no-such-target"}).status_code == 404


def test_targets_show_credential_references_never_values(api):
    response = api.client("viewer").get("/targets")
    assert response.status_code == 200
    targets = {t["name"]: t for t in response.json()}
    assert set(targets) == {"app-sqlite", "uploads", "chained", "pruned", "guarded"}
    assert targets["guarded"]["password"] == "env:API_TEST_DB_PASSWORD"
    assert DB_SECRET not in response.text


def test_bad_input_gets_a_specific_error(api):
    operator, admin, viewer = api.client("operator"), api.client("admin"), api.client("viewer")

    unknown = operator.post("/backups", json={"target": "no-such-target"})
    assert unknown.status_code == 404 and "unknown target 'no-such-target'" in unknown.json()["error"]["message"]

    broken = operator.post("/backups", content=b'{"target": ', headers={"Content-Type": "application/json"})
    assert broken.status_code == 422 and broken.json()["error"]["message"] == "the request body is not valid JSON"
    binary = operator.post("/backups", content=b"\xff\xfe\x00", headers={"Content-Type": "application/json"})
    assert binary.status_code == 422

    typo = operator.post("/backups", json={"target": "app-sqlite", "tpye": "full"})
    assert typo.status_code == 422 and ["body", "tpye"] in [d["loc"] for d in typo.json()["error"]["details"]]
    loose = admin.post("/backups/x/restore", json={"destination": "/srv/x", "dry_run": "yes"})
    assert loose.status_code == 422  # no "yes" -> True guessing
    incremental = operator.post("/backups", json={"target": "app-sqlite", "type": "incremental"})
    assert incremental.status_code == 400  # a well-formed request, but a database target has no incrementals
    assert "point-in-time recovery" in incremental.json()["error"]["remedy"]

    limit = 1 << 20
    big = {"target": "app-sqlite", "pad": "x" * limit}
    assert operator.post("/backups", json=big).status_code == 413
    streamed = operator.post("/backups", content=iter([b'{"target": "app-sqlite", "pad": "', b"x" * limit, b'"}']),
                             headers={"Content-Type": "application/json"})  # chunked: no Content-Length to trust
    assert streamed.status_code == 413 and streamed.json()["error"]["type"] == "PayloadTooLarge"
    assert api.client(None).post("/backups", json=big).status_code == 401  # who you are is checked before the body

    assert viewer.get("/backups", params={"cursor": "bm90LWEtY3Vyc29y"}).status_code == 400
    assert viewer.get("/backups", params={"limit": 0}).status_code == 422
    assert viewer.get("/backups", params={"target": "no-such-target"}).status_code == 404
    assert viewer.get("/backups/app-sqlite-20000101T000000Z-000000").status_code == 404
    assert viewer.get("/runs/app-sqlite-20000101T000000Z-000000.verify-0000").status_code == 404
    wrong_method = viewer.put("/backups", json={})
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET, POST"
    head = viewer.head("/backups")
    assert head.status_code == 405 and head.headers["allow"] == "GET, POST"  # what it says is what it serves
    assert viewer.get("/no-such-path").status_code == 404
    assert api.client(None).get("/no-such-path").status_code == 401  # nothing about the API without a token
    for response in (unknown, broken, typo, streamed):
        assert set(response.json()["error"]) >= {"type", "message", "remedy"}


def test_health_is_200_when_catalog_and_tiers_answer(api):
    response = api.client("viewer").get("/health")
    assert response.status_code == 200, response.text
    components = {c["name"]: c["status"] for c in response.json()["components"]}
    assert components == {"broker": "embedded", "catalog": "ok", "local": "ok"}


def test_health_is_503_naming_an_unreachable_broker_and_a_missing_mount(tmp_path, session_keys):
    tokens = make_tokens(["viewer", "operator"])
    cfg = write_config(
        tmp_path / "targets.toml", session_keys,
        settings='broker_url = "redis://127.0.0.1:1/0"\n',
        tiers=f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "store"}"\n'
              f'[tiers.usb]\nkind = "external"\npath = "{tmp_path / "not-mounted"}"\n',
        targets=f'[targets.t]\nkind = "files"\npaths = ["{tmp_path}"]\n' + api_table(tokens))
    server = ApiServer(cfg, tokens, tmp_path / "api.log")
    try:
        health = server.client("viewer").get("/health")
        assert health.status_code == 503, health.text
        assert health.json()["status"] == "unavailable"
        components = {c["name"]: c for c in health.json()["components"]}
        assert components["broker"]["status"] == "unavailable" and "redis://127.0.0.1:1/0" in components["broker"]["detail"]
        assert components["usb"]["status"] == "unavailable" and "not a mount point" in components["usb"]["detail"]
        assert components["catalog"]["status"] == "ok" and components["local"]["status"] == "ok"

        refused = server.client("operator").post("/backups", json={"target": "t"})
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "ServiceUnavailable"
    finally:
        server.stop()


def test_health_answers_within_its_probe_time_however_many_tiers_hang(tmp_path, session_keys, runtime_for, monkeypatch):
    """Three S3 endpoints that accept the connection and never answer: one bound for all of them."""
    from backup_tasks.api import health

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes the handshakes; nobody ever reads
    port = silent.getsockname()[1]
    monkeypatch.setenv("BT_HANG_ACCESS_KEY_ID", "hang")
    monkeypatch.setenv("BT_HANG_SECRET_ACCESS_KEY", "hang-secret")
    tiers = f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "store"}"\n' + "".join(
        f'[tiers.s3{n}]\nkind = "s3"\nbucket = "b"\nendpoint_url = "http://127.0.0.1:{port}"\n'
        f'path_style = true\ncredentials = "env:BT_HANG"\n' for n in range(3))
    rt = runtime_for(write_config(tmp_path / "targets.toml", session_keys, tiers=tiers,
                                  targets=f'[targets.t]\nkind = "files"\npaths = ["{tmp_path}"]\n'))
    monkeypatch.setattr(health, "PROBE_SECONDS", 1.5)
    try:
        started = time.monotonic()
        report = health.check(rt)
        took = time.monotonic() - started
    finally:
        silent.close()
    components = {c["name"]: c for c in report["components"]}
    assert report["status"] == "unavailable" and took < 3.0, took  # not 3 x 1.5 s one after another
    assert all(components[f"s3{n}"]["status"] == "unavailable" for n in range(3))
    assert components["local"]["status"] == "ok" and components["catalog"]["status"] == "ok"


def test_a_restore_root_nested_in_another_is_still_a_root_and_refused(tmp_path):
    from backup_tasks.api.destinations import check
    from backup_tasks.api.errors import DestinationRefused

    outer = tmp_path / "restore"
    inner = outer / "team-a"
    inner.mkdir(parents=True)
    with pytest.raises(DestinationRefused, match="is a restore root itself"):
        check(str(inner), (outer, inner))
    assert check(str(inner / "app.db"), (outer, inner)) == inner / "app.db"


def test_the_server_follows_the_targets_file_targets_and_tokens_without_a_restart(tmp_path, session_keys):
    """Workers pick up an edited targets file; the API server, started with --config, does too."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("a\n")
    first_tokens = make_tokens(["operator"])
    cfg = tmp_path / "targets.toml"

    def targets(*names: str, tokens: dict[str, str]) -> Path:
        body = "".join(f'[targets.{n}]\nkind = "files"\npaths = ["{tree}"]\n' for n in names)
        return write_config(cfg, session_keys, targets=body + api_table(tokens))

    server = ApiServer(targets("first", tokens=first_tokens), first_tokens, tmp_path / "api.log")
    try:
        operator = server.client("operator")
        unknown = operator.post("/backups", json={"target": "added"})
        assert unknown.status_code == 404 and "unknown target 'added'" in unknown.json()["error"]["message"]

        # The operator adds a target and rotates the operator token; the server is not restarted.
        second_tokens = make_tokens(["operator"])
        targets("first", "added", tokens=second_tokens)
        assert operator.post("/backups", json={"target": "added"}).status_code == 401  # the old token is gone
        rotated = server.client(None, token=second_tokens["operator"])
        accepted = rotated.post("/backups", json={"target": "added"})
        assert accepted.status_code == 202, accepted.text
        assert {t["name"] for t in rotated.get("/targets").json()} == {"first", "added"}
        backup_id = accepted.json()["id"]
        assert rotated.get(f"/backups/{backup_id}").json()["target"] == "added"

        # An edit that does not validate leaves the last good file in force, and the log says why.
        cfg.write_text(cfg.read_text() + '\n[targets.broken]\nkind = "no-such-kind"\n')
        still = rotated.get("/targets")
        assert still.status_code == 200 and {t["name"] for t in still.json()} == {"first", "added"}
        assert "is invalid; keeping the configuration in force" in (tmp_path / "api.log").read_text()
    finally:
        server.stop()
