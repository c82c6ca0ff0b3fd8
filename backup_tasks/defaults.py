"""Every default in one place, so an operator can read what happens when they say nothing.

The embedded default keeps everything under ``./backups`` next to where backupctl runs:
catalog, staging and the local tier, so a laptop needs no broker and no database server.
"""

from __future__ import annotations

#: where the config file is looked for when neither --config nor BACKUP_CONFIG is given
CONFIG_FILE = "backup-tasks.toml"

EMBEDDED_ROOT = "backups"
STAGING_DIR = f"{EMBEDDED_ROOT}/staging"
CATALOG_URL = f"sqlite:///{EMBEDDED_ROOT}/catalog.db"
LOCAL_TIER_PATH = f"{EMBEDDED_ROOT}/store"
LOCAL_TIER_NAME = "local"

TIMEZONE = "UTC"
COMPRESSION = "zstd"
COMPRESSIONS = ("zstd", "gzip", "none")
#: zstd level 3 with 2 threads measured ~130 MiB/s here at a ratio close to gzip -6 (DESIGN §4)
ZSTD_LEVEL = 3
ZSTD_THREADS = 2
#: zstd's default job size grows with the level and fills whole buffers on incompressible
#: stretches (+108 MiB measured on 1 GiB of random data); 2 MiB jobs kept the stage at
#: 41 MiB resident, ran faster, and cost 0.3% of ratio on text (measured here)
ZSTD_JOB_SIZE = 2 << 20
GZIP_LEVEL = 6

#: read/write size for every streaming stage: large enough for syscalls to vanish, small
#: enough that a stage's resident memory stays a few MiB whatever the artifact size
CHUNK_SIZE = 1 << 20

#: schedules by kind follow what the seed documents' users already run
SCHEDULE_BY_KIND = {
    "postgres": "0 2 * * *",
    "mysql": "0 2 * * *",
    "sqlite": "0 2 * * *",
    "files": "0 3 * * 0",
    "config": "0 1 * * 6",
}
RPO_HOURS = 26

#: max age in days per tier kind (DESIGN §5, seeds: local 30, cloud 90)
MAX_AGE_DAYS_BY_TIER_KIND = {"local": 30, "external": 30, "s3": 90}

SOURCE_KINDS = ("postgres", "mysql", "sqlite", "files", "config")
TIER_KINDS = ("local", "external", "s3")
RETENTION_KEYS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within")

#: task retries for TransientError: exponential backoff with full jitter, capped
TASK_MAX_RETRIES = 5
TASK_RETRY_BACKOFF_MAX = 300

#: longer than the longest stage, or Redis hands an unacked stage to a second worker
#: while the first is still working on it (acks_late)
BROKER_VISIBILITY_TIMEOUT = 6 * 3600

#: how often `client.Run.wait` looks at the catalog
WAIT_POLL_SECONDS = 0.25

#: HTTP API (backupctl api serve): loopback unless told otherwise; put TLS in front of it
API_HOST = "127.0.0.1"
API_PORT = 8080
#: request bodies are small JSON documents; anything larger is refused with 413 before parsing
API_MAX_BODY_BYTES = 64 * 1024
#: GET /backups page size, and the largest a client may ask for
API_PAGE_SIZE = 50
API_MAX_PAGE_SIZE = 500
