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
#: archived logs (PostgreSQL WAL) wait here, durable, until the shipping task uploads them
SPOOL_DIR = f"{EMBEDDED_ROOT}/spool"
#: 4 GiB: 256 segments of 16 MiB, hours of WAL for most clusters; beyond it the shipping task alerts (and drops nothing)
SPOOL_MAX_BYTES = 4 << 30
#: the command restore_command runs; a restore adds --config with the targets file it used
BACKUPCTL_COMMAND = "backupctl"
#: the shipping task of each point-in-time target runs every minute on its host's queue: with
#: archive_timeout = 60 a commit is stored about two minutes after it was made
LOG_SHIP_SCHEDULE = "* * * * *"
#: a restore to a moment waits this long for the server to finish replaying
PITR_RECOVERY_TIMEOUT_SECONDS = 3600
#: a restore's WAL read-ahead: segments kept ready beside pg_wal (8 x 16 MiB, as pgBackRest's default queue) and fetched at once
WAL_PREFETCH_SEGMENTS = 8
WAL_PREFETCH_WORKERS = 2

TIMEZONE = "UTC"
COMPRESSION = "zstd"
COMPRESSIONS = ("zstd", "gzip", "none")
#: zstd level 3 with 2 threads measured ~130 MiB/s here at a ratio close to gzip -6, against ~20 MiB/s for gzip -6
ZSTD_LEVEL = 3
ZSTD_THREADS = 2
#: plaintext per zstd frame: each frame is compressed and decompressed on its own, so two
#: threads work at once both ways. On an 827 MB pg_dump, 2 MiB frames came out 0.1% smaller
#: than one multi-threaded frame (4 MiB: 0.05% larger, 8 MiB: 0.1% larger) and decompressed as
#: fast; a reader or a writer holds about three frames, so smaller frames also mean less memory
ZSTD_FRAME_SIZE = 2 << 20
#: threads that decompress a framed object on read-back (verify, restore). Two, even on 2 cores:
#: a verify on its own is bound by its total CPU (pyrage decryption ~0.5 CPU-s per 280 MB, zstd
#: ~0.7, two sha256 ~0.65): there a second decoder took the same wall (1.14-1.27 s on 827 MB)
#: for 0.05-0.1 CPU-s and ~5 MiB more. But in the verify a chain runs right after its backup,
#: decoding ran twice as slow (1.2-1.6 CPU-s for the same bytes; the hashes and decryption
#: did not), and one decoder became the critical path: with two, that verify took 1.19-1.36 s
#: against 1.20-1.57 s. Restores of the same dump took 1.02x (-j1) and 1.01x (-j2) pg_restore's time
#: with two decoders, 0.99x and 1.09x with one
ZSTD_READ_THREADS = 2
#: stored size from which read-back (verify, restore) decrypts in a child process rather than a
#: thread: pyrage holds the GIL while it decrypts, which stalled the tar scan beside it (a 100k-file
#: verify: 3.5-4.2 s in a child against 4.0-4.5 s in a thread); a child costs ~26 ms to start and
#: copies the bytes through two pipes, which only pays for objects of some size
DECRYPT_IN_CHILD_FROM_BYTES = 64 << 20
GZIP_LEVEL = 6

#: read/write size for every streaming stage: large enough for syscalls to vanish, small
#: enough that a stage's resident memory stays a few MiB whatever the artifact size
CHUNK_SIZE = 1 << 20

#: a target's schedule when it names none: nightly at 02:00 (databases), except for the
#: kinds below; both follow what the seed documents' users already run
SCHEDULE = "0 2 * * *"
SCHEDULE_BY_KIND = {
    "files": "0 3 * * 0",
    "config": "0 1 * * 6",
}
RPO_HOURS = 26
#: point-in-time targets: the seed documents promise database logs every 15 minutes
PITR_RPO_MINUTES = 15
#: binlog shipping runs this often per binlog target (beat, on the target's host queue):
#: each run rotates the binary log, so a minute is also roughly the restorable lag
BINLOG_SHIP_SCHEDULE = "* * * * *"

RETENTION_KEYS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within")

#: task retries for TransientError: exponential backoff with full jitter, capped
TASK_MAX_RETRIES = 5
TASK_RETRY_BACKOFF_MAX = 300

#: longer than the longest stage, or Redis hands an unacked stage to a second worker
#: while the first is still working on it (acks_late). Redis redelivers an unacked
#: message only after this long, so it is also how long a stage of a worker that died
#: without closing its connection (power loss; a SIGKILLed pool child is redelivered at
#: once) waits before it runs again. Every stage's hard time limit must stay below it
#: (config refuses otherwise). Setting: ``broker_visibility_timeout``.
BROKER_VISIBILITY_TIMEOUT = 6 * 3600

# -- distributed operation: beat, locks, time limits, progress ------------------------------

#: redbeat: the active beat holds a Redis lock for this long and extends it on every tick;
#: a standby takes over once it expires. 15 s measured as a ~15 s takeover here.
BEAT_LOCK_TIMEOUT = 15
#: beat ticks at least this often; it must stay well below the lock timeout (each tick
#: extends the lock) and it is also how often a standby retries the lock, so a takeover
#: happens within BEAT_LOCK_TIMEOUT + BEAT_MAX_LOOP_INTERVAL seconds of the active beat dying.
BEAT_MAX_LOOP_INTERVAL = 5
#: Redis key prefix of the redbeat schedule and lock (one per installation sharing a Redis)
BEAT_KEY_PREFIX = "backup_tasks:beat:"
#: every stored backup is read back in full at least this often (rolling re-verification)
REVERIFY_DAYS = 30
#: a backup still ``uploaded`` this long after its upload is verified by ``backup.verify_pending``
#: (younger ones are left to their own chain's verify, which may simply be queued)
VERIFY_PENDING_GRACE_SECONDS = 3600

#: global beat jobs: name -> (task, schedule, queue). The RPO watchdog is the alerting
#: work's task; it is scheduled here so that all of beat's work is in one place.
GLOBAL_JOBS = {
    "cleanup": ("backup.cleanup", "0 3 * * *", "maintenance"),                # retention and debris
    "verify-pending": ("backup.verify_pending", "0 4 * * *", "verify"),       # backups left unverified
    "reverify": ("backup.reverify", "30 4 * * *", "maintenance"),             # rolling full re-reads
    "drills": ("backup.drill_due", "30 3 * * 0", "maintenance"),              # Sunday: one drill per target with [drill]
    "reencrypt-after-lock": ("backup.reencrypt_unlocked", "45 4 * * *", "maintenance"),  # re-encryptions an Object Lock held back
    "rpo-watchdog": ("backup.watchdog", "*/15 * * * *", "maintenance"),       # no verified backup within rpo_hours
    "dr-report": ("backup.report", "0 7 * * 1", "maintenance"),               # Monday: the DR report to report_recipients
}

#: per-target run lock (Redis key ``backup_tasks:lock:target:<name>``): taken by backup.start,
#: refreshed by every running stage, released when the upload is committed or the run
#: failed. The TTL only matters when a whole chain vanished (its lock then expires).
RUN_LOCK_TTL = 900
RUN_LOCK_PREFIX = "backup_tasks:lock:target:"
#: a running stage's process writes a heartbeat to the catalog every RUN_HEARTBEAT_SECONDS
#: (or a fifth of the timeout, if shorter); a run whose stage has not beaten for
#: RUN_HEARTBEAT_TIMEOUT lost its worker: the watchdog, or the target's next start, marks it
#: failed, frees its lock and removes its staging. Ten missed beats: a catalog hiccup or a
#: busy disk does not kill a live run. Setting: ``run_heartbeat_timeout``.
RUN_HEARTBEAT_SECONDS = 30
RUN_HEARTBEAT_TIMEOUT = 300

#: the chain's stages in the order a run goes through them; the only place that order is written
STAGES = ("dump", "compress", "encrypt", "upload", "verify")
#: worker slots one chain needs for its stages to overlap (dump, compress, encrypt and upload
#: at once); the default concurrency of a host's worker, unless the host has more cores
PIPELINE_SLOTS = 4
#: stage time limits in seconds. The soft limit raises inside the stage (the run fails
#: with a message naming the limit); the hard limit kills the worker process. Every hard
#: limit must stay below BROKER_VISIBILITY_TIMEOUT. Settings: ``stage_soft_time_limits``
#: and ``stage_hard_time_limits`` (tables by stage name).
STAGE_SOFT_TIME_LIMIT = 5 * 3600
STAGE_HARD_TIME_LIMIT = 5 * 3600 + 1800

#: a running stage reports its PROGRESS (Celery state, Flower, client) at most this often
PROGRESS_INTERVAL_SECONDS = 1.0

#: how often `client.Run.wait` looks at the catalog
WAIT_POLL_SECONDS = 0.25
#: a run still queued this long into `client.Run.wait` makes it ask whether any worker consumes its queue
NO_WORKER_CHECK_SECONDS = 3.0

#: alerts (alerting/): an identical alert goes out at most once an hour; the rest are counted
ALERT_REPEAT_MINUTES = 60
#: the watchdog warns below 10% free on a local or external tier
ALERT_MIN_FREE_PERCENT = 10
#: a low-space condition clears only this far above its thresholds (percentage points of free space, and this
#: percent of a bytes threshold), so free space hovering at the threshold does not alert and resolve every check
LOW_SPACE_RESOLVE_MARGIN_PERCENT = 2
#: size anomaly: a stored artifact below 50% or above 200% of the median of the last 7 backups
SIZE_ANOMALY_MIN_PERCENT = 50
SIZE_ANOMALY_MAX_PERCENT = 200
SIZE_ANOMALY_HISTORY = 7
#: fewer earlier backups than this and there is no median worth comparing with
SIZE_ANOMALY_MIN_HISTORY = 3
#: the DR report's window for success rates and plots
REPORT_DAYS = 30
#: the watchdog reminds to rotate when the current encryption key has been current longer than this
#: (the monthly rotation of the seed documents); 0 turns the reminder off
KEY_MAX_AGE_DAYS = 30
#: HTTP API (backupctl api serve): loopback unless told otherwise; put TLS in front of it
API_HOST = "127.0.0.1"
API_PORT = 8080
#: request bodies are small JSON documents; anything larger is refused with 413 before parsing. 1 MiB
#: holds the largest valid one (a restore: destination and 10 paths of 4096 characters, each
#: character up to 12 bytes as a JSON escape), so a valid request never gets 413
API_MAX_BODY_BYTES = 1 << 20
#: GET /backups page size, and the largest a client may ask for
API_PAGE_SIZE = 50
API_MAX_PAGE_SIZE = 500

#: refused anonymous API calls: this many are audited one by one, then one per this many seconds;
#: the rest are counted into the next audited one (api/anonymous_audit.py)
API_ANONYMOUS_AUDIT_BURST = 30
API_ANONYMOUS_AUDIT_EVERY_SECONDS = 2.0

#: re-encryption after a key rotation is background work: its tasks go to the verify queue at the lowest
#: Redis priority (0 is the highest, 9 the lowest), so verifying tonight's backups is never kept waiting
REENCRYPT_PRIORITY = 9
#: objects from this size up are re-encrypted by two child processes (decrypt, encrypt) instead of
#: two threads that pyrage's hold on the GIL serializes; below it, starting them costs more than it saves
REENCRYPT_PROCESSES_MIN_BYTES = 8 << 20
