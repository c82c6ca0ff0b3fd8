"""`make demo`: the quickstart, run for real on the embedded default (no Redis, no servers).

It creates keys, a targets file, a sample SQLite database and a folder, backs both up
through the full chain, verifies, restores into a fresh directory and compares. Every
step is a real ``backupctl`` command, printed before it runs, so the output doubles as
a transcript of what an operator would type.

    python -m backup_tasks.demo DIR
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from backup_tasks.records import keys


def sh(*args: str, config: Path | None = None) -> dict:
    argv = ["backupctl", *args] + (["--config", str(config)] if config else [])
    print(f"\n$ {' '.join(argv)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "backup_tasks.cli", *argv[1:], "--json"], capture_output=True, text=True)
    data = json.loads(done.stdout) if done.stdout.strip() else {}
    summary = {k: data[k] for k in ("id", "status", "size_plain", "size_stored", "duration_seconds", "restored_to")
               if isinstance(data, dict) and k in data}
    print(json.dumps(summary or data, indent=1)[:1500])
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        raise SystemExit(f"demo step failed with exit code {done.returncode}")
    return data


def main(root: str = "demo") -> int:
    base = Path(root).absolute()
    if base.exists():
        shutil.rmtree(base)
    app = base / "app"
    (app / "uploads" / "2026").mkdir(parents=True)
    (app / "uploads" / "2026" / "report.csv").write_text("".join(f"{i},student {i},{i % 20}\n" for i in range(5000)))
    (app / "uploads" / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>\n")
    db = app / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE students (id INTEGER PRIMARY KEY, name TEXT, grade INTEGER)")
    conn.executemany("INSERT INTO students (name, grade) VALUES (?, ?)", [(f"student {i}", i % 12) for i in range(10000)])
    conn.commit()
    conn.close()

    print(f"demo workspace: {base}")
    sh("keys", "generate", "--out", str(base / "keys"))
    config = base / "backup-tasks.toml"
    config.write_text(f"""[settings]
recipients_file = "keys/{keys.RECIPIENT_FILE}"
identities_file = "keys/{keys.IDENTITY_FILE}"
signing_key_file = "keys/{keys.SIGNING_KEY_FILE}"
staging_dir = "backups/staging"
catalog_url = "sqlite:///backups/catalog.db"

[tiers.local]
kind = "local"
path = "backups/store"

[targets.app-sqlite]
kind = "sqlite"
path = "{db}"

[targets.uploads]
kind = "files"
paths = ["{app / 'uploads'}"]
exclude = ["*.tmp"]
""")
    print(f"\nwrote {config}")
    sh("targets", config=config)
    db_run = sh("backup", "app-sqlite", "--wait", config=config)
    files_run = sh("backup", "uploads", "--wait", config=config)
    sh("list", config=config)
    sh("verify", db_run["id"], config=config)

    restored = base / "restored"
    sh("restore", db_run["id"], "--to", str(restored / "app.db"), config=config)
    sh("restore", files_run["id"], "--to", str(restored / "files"), config=config)

    count = sqlite3.connect(restored / "app.db").execute("SELECT count(*) FROM students").fetchone()[0]
    integrity = sqlite3.connect(restored / "app.db").execute("PRAGMA integrity_check").fetchone()[0]
    tree = restored / "files" / str(app / "uploads").lstrip(os.sep)
    same = filecmp.dircmp(app / "uploads", tree)
    identical = not (same.diff_files or same.left_only or same.right_only) and \
        filecmp.cmp(app / "uploads" / "2026" / "report.csv", tree / "2026" / "report.csv", shallow=False)
    print("\nresult:")
    print(f"  SQLite restored: {count} students, integrity_check {integrity}")
    print(f"  uploads restored identical: {identical}")
    ok = count == 10000 and integrity == "ok" and identical
    print("  DEMO PASSED" if ok else "  DEMO FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
