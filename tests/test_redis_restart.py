"""Runbook: Redis restarts under a running worker and beat; the run completes, no scheduled run is lost.

The test runs its own persistent ``redis-server`` (AOF, as a broker must be: see README,
Running distributed), a worker and a beat on it. A large backup is mid-chain when Redis
goes down for two seconds and comes back on the same port with its data. Meanwhile beat
keeps a small target on a 3-second schedule. Afterwards: the large run is verified and
really restores; every task beat published became exactly one recorded run; nothing is
stuck in ``running``; and whatever the catalog calls verified reads back as verified.

The second runbook restarts Redis under a worker that runs a stage *and* has a free pool
slot, as the deploy files start them (``--concurrency 2``). Its consumer is then blocked
in BRPOP when Redis goes away, the case in which kombu's own transport made the worker
exit (broker_transport.py). A one-process worker, as in the first runbook, has no free
slot during a stage, so it never met that case.

The third restarts Redis mid-dump, as stages are being sent and received; the fourth pins
down what that moment could lose: a message the worker received but had not started.
"""

from __future__ import annotations

import hashlib
import time

import redis

from backup_tasks import client
from backup_tasks.records.catalog import Status
from backup_tasks.ops.verify import verify_backup
from conftest import run_cli
from distributed import big_tree, private_redis, start_beat, wait_for  # noqa: F401,F811 - pytest fixtures
from test_sqlite_backup import make_app_db


def test_a_redis_restart_mid_run_loses_nothing(tmp_path, make_config, runtime_for, start_worker, start_beat, private_redis):
    tree = big_tree(tmp_path, 160)
    db = tmp_path / "small.db"
    make_app_db(db, rows=200)
    cfg = make_config(f'[targets.bulk]\nkind = "files"\nhost = "hostA"\npaths = ["{tree}"]\nschedule = "0 3 1 1 *"\n'
                      f'[targets.tick]\nkind = "sqlite"\nhost = "hostA"\npath = "{db}"\nschedule = "@every 3s"\n',
                      settings="compression_threads = 1\nbeat_lock_timeout = 4\nbeat_max_loop_interval = 1\n",
                      tiers=f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "state" / "store"}"\nbandwidth_limit = "8MiB"\n')
    broker = private_redis.url
    worker = start_worker(cfg, broker, ["host.hostA", "verify"], name="w1@hostA")
    beat = start_beat(cfg, broker, level="DEBUG")  # DEBUG: beat logs the id of each task it published
    rt = runtime_for(cfg, BACKUP_BROKER_URL=broker)

    run = client.enqueue_backup("bulk", rt=rt)

    def uploading() -> bool:  # mid-stage, bytes moving: not in the instant one stage hands over to the next
        report = run.progress() or {}
        return report.get("stage") == "upload" and 0 < report["bytes_done"] < (report["bytes_total"] or float("inf"))

    wait_for(uploading, 60, "the large run to be mid-upload")
    private_redis.restart(down_seconds=2)
    restarted_at = time.time()

    info = run.wait(timeout=120)
    assert info["status"] == Status.VERIFIED
    wait_for(lambda: sum(1 for at, name in beat.sent() if at > restarted_at + 1 and name == "backup:tick") >= 2, 30, "beat publishing again after the restart")
    # Stop beat between two publishes (each is logged when sent, and its id once published).
    wait_for(lambda: len(beat.published()) == len(beat.sent()) and time.time() - beat.sent()[-1][0] < 1.5, 10,
             "a quiet moment between publishes")
    beat.stop()
    # The fixed maintenance entries (the quarter-hourly watchdog, say) may fall due during the test too;
    # only backups become catalog runs, and the only backup due on this schedule is the tick.
    assert {name for _, name in beat.sent() if name.startswith("backup:")} == {"backup:tick"}
    published = set(beat.published(task=r"backup\.start"))

    def settled():
        runs = {r.id: r for r in rt.catalog.list(target="tick") if r.actor == "beat"}
        return set(runs) == published and all(r.status in (Status.VERIFIED, Status.FAILED) for r in runs.values()) and runs

    runs = wait_for(settled, 60, f"every published run to be recorded and finished; worker log:\n{worker.log.read_text()[-3000:]}")
    runs = list(runs.values())
    # A tick run may be skipped while the previous one still holds the lock; none may fail otherwise.
    assert all(r.status == Status.VERIFIED or r.error.startswith("skipped:") for r in runs), [(r.id, r.error) for r in runs]
    assert not rt.catalog.list(status=Status.RUNNING)

    # Nothing is recorded as good that is not: every verified backup reads back whole.
    for row in rt.catalog.list(status=Status.VERIFIED):
        assert verify_backup(rt, row.id)["status"] == "verified"
    restored = tmp_path / "restored"
    run_cli("restore", run.id, "--to", str(restored), config=cfg, env={"BACKUP_BROKER_URL": broker}, check=0)
    assert _sha(restored / tree.relative_to("/") / "big.bin") == _sha(tree / "big.bin")
    assert "Connection to broker lost" in worker.log.read_text()  # the restart really hit the worker
    nothing_held(broker)



def _sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_a_worker_with_a_free_slot_rides_out_a_redis_restart_mid_stage(tmp_path, make_config, runtime_for, start_worker,
                                                                      private_redis):
    tree = big_tree(tmp_path, 40)
    cfg = make_config(f'[targets.bulk]\nkind = "files"\nhost = "hostA"\npaths = ["{tree}"]\n',
                      tiers=f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "state" / "store"}"\nbandwidth_limit = "4MiB"\n')
    broker = private_redis.url
    worker = start_worker(cfg, broker, ["host.hostA", "verify"], name="w2@hostA", concurrency=2)
    pid = worker.proc.pid
    rt = runtime_for(cfg, BACKUP_BROKER_URL=broker)

    run = client.enqueue_backup("bulk", rt=rt)

    def uploading() -> bool:  # one slot busy with the stage, the other waiting for a message
        report = run.progress() or {}
        return report.get("stage") == "upload" and 0 < report["bytes_done"] < (report["bytes_total"] or float("inf"))

    wait_for(uploading, 60, "the run to be mid-upload")
    private_redis.restart(down_seconds=2)

    info = run.wait(timeout=120)
    log = worker.log.read_text()
    assert info["status"] == Status.VERIFIED, log[-3000:]
    # The very process that lost the broker finished the run: it never exited, and nothing restarted it.
    assert worker.proc.poll() is None and worker.proc.pid == pid, log[-3000:]
    assert "Unrecoverable error" not in log
    assert "Connection to broker lost" in log  # the restart hit the worker ...
    assert "Restoring 1 unacknowledged message(s)" in log  # ... while it held the running stage's message
    restored = tmp_path / "restored"
    run_cli("restore", run.id, "--to", str(restored), config=cfg, env={"BACKUP_BROKER_URL": broker}, check=0)
    assert _sha(restored / tree.relative_to("/") / "big.bin") == _sha(tree / "big.bin")
    nothing_held(broker)


def test_a_worker_rides_out_a_redis_restart_mid_dump(tmp_path, make_config, runtime_for, start_worker, private_redis):
    """Redis goes down the moment the dump's output appears: when the dump sends compress, and compress encrypt.

    A stage the worker received just before the restart but had not started is the case
    the next test pins down; whether this run meets it depends on timing (a probe like it,
    with 800 MiB, lost a stage in about one run of five), so this one checks the whole run
    under the restart as operators meet it.
    """
    tree = big_tree(tmp_path, 160)
    cfg = make_config(f'[targets.bulk]\nkind = "files"\nhost = "hostA"\npaths = ["{tree}"]\n')
    broker = private_redis.url
    worker = start_worker(cfg, broker, ["host.hostA", "verify"], name="w2@hostA", concurrency=4)
    rt = runtime_for(cfg, BACKUP_BROKER_URL=broker)

    run = client.enqueue_backup("bulk", rt=rt)
    run_dir = tmp_path / "state" / "staging" / run.id
    wait_for(lambda: run_dir.is_dir() and any(p.name.endswith(".part") for p in run_dir.iterdir()), 60,
             "the dump's output to appear", interval=0.005)
    private_redis.restart(down_seconds=2)

    info = run.wait(timeout=120)
    log = worker.log.read_text()
    assert info["status"] == Status.VERIFIED, log[-3000:]
    assert "Connection to broker lost" in log
    nothing_held(broker)


def nothing_held(broker: str) -> None:
    """No message is left unacknowledged, to be handed out again when the visibility timeout ends.

    The run turns verified inside its last task, and a task is acknowledged only once it has
    returned (late acknowledgement), so that last acknowledgement may follow the status by a
    moment. A message really left behind stays until the visibility timeout, hours.
    """
    broker_db = redis.Redis.from_url(broker)
    try:
        wait_for(lambda: broker_db.hlen("unacked") == 0, 10, "every message to be acknowledged")
    except AssertionError:
        raise AssertionError(f"left unacknowledged: {broker_db.hkeys('unacked')}") from None


def test_a_message_received_but_not_started_when_redis_goes_is_queued_again_once_redis_is_back(private_redis):
    """What a worker had received but not yet handed to a pool process when Redis went away is delivered again.

    Celery drops such a message on losing the broker, counting on the broker to deliver it
    again; its channel's restore cannot reach Redis while Redis is down. It used to stay in
    ``unacked`` until the visibility timeout (hours): a stage sent a moment before a Redis
    restart (the dump's compress, the compress's encrypt) then never ran, and its run stayed
    ``running`` with nothing in the log, never reaped since its message looked held. Here
    ``held`` is the consumer holding the message unacknowledged when Redis goes down, and
    ``back`` the consumer's new connection once Redis is up.
    """
    from kombu import Connection

    from backup_tasks.orchestration import redis_channel

    broker_db = redis.Redis.from_url(private_redis.url)
    with Connection(private_redis.url) as sender:
        sender.SimpleQueue("host.hostA").put({"stage": "encrypt"})
    held = Connection(private_redis.url)
    assert isinstance(held.transport, redis_channel.Transport)
    message = held.default_channel.basic_get("host.hostA")
    assert message is not None and broker_db.hlen("unacked") == 1 and broker_db.llen("host.hostA") == 0
    with private_redis.down():
        try:
            held.release()  # puts the message back: fails, Redis is down
        except redis.ConnectionError:
            pass  # Celery's consumer ignores the same error when it closes a lost connection
    with Connection(private_redis.url) as back:
        channel = back.default_channel
        broker_db = redis.Redis.from_url(private_redis.url)
        assert broker_db.hlen("unacked") == 0 and broker_db.llen("host.hostA") == 1
        again = channel.basic_get("host.hostA")
        assert again is not None and again.decode() == {"stage": "encrypt"}
        again.ack()
    assert broker_db.hlen("unacked") == 0
