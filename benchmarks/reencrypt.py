"""Re-encryption benchmark, run by hand:  python benchmarks/reencrypt.py [--size-mib 256] [--repeat 3]

One files target holding SIZE of incompressible data is backed up to a local tier on key A;
then, per repetition, interleaved:

1. **baseline**: ``age -d -i A OBJECT | age -r B > OUT`` on the very stored object (and,
   apart, the same with OUT fsynced, as our local tier does with every object);
2. **ours**: ``reencrypt_backup`` of that backup to key B, in a child process (its peak
   RSS is its own; the age children it starts are reported apart), with its CPU seconds
   (its own and its age children's). Its time is split by the progress reports into
   *rewrite* (decrypt → encrypt → store, the copies to other tiers) and *verify* (the
   read-back of every copy, one of them decrypted, the manifest commit, then the old
   object's deletion; a checkout from before the read-back decrypted did the sha256
   read-back in *rewrite* and a full verification through the restore path in *verify*).
   The ratio compares the rewrite with the age pipe, which does the same work minus the
   hashing; the whole task is given too, in wall time and in CPU time (the CPU ratio
   hardly moves with the machine's load, the wall ratio does);
3. **the stream alone**: old object → decrypt → encrypt → nowhere, hashing the old
   object, the plaintext and the new bytes as the product does, with two child processes
   (which read the file themselves and hash in their own processes) and with two threads;
4. with ``--threads``, also **threads**: the whole task with the older two-thread pipeline
   (pyrage holds the GIL, so its decrypt and encrypt take turns);
5. with ``--before DIR``, also **before**: the whole task with the code of another
   checkout (e.g. ``--before /path/to/main``), for a before/after in one run.

Before each repetition the object is re-backed up on key A, so every case starts from
the same state, and the stored object is cat-ed so the page cache starts the same.
Targets: rewrite >= 0.8x the age pipe's throughput; peak RSS <= 150 MiB.
Results go to stdout and benchmarks/out/reencrypt-<time>.json. The load average before
each run is recorded: other work on the machine moves wall times a lot.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

MiB = 1024 * 1024

PIPE_CHILD = r'''
import resource, sys, time, json
from pyrage import x25519
from backup_tasks.stages.digest import HashingReader
from backup_tasks.stages.encrypt import DecryptingReader, EncryptingReader
from backup_tasks.stages.reencrypt_pipe import ReencryptingReader
obj, identity_file, recipient, mode = sys.argv[1:5]
identity = x25519.Identity.from_str([l for l in open(identity_file) if l.startswith("AGE-SECRET-KEY-")][0].strip())
to = [x25519.Recipient.from_str(recipient)]
started = time.perf_counter()
with open(obj, "rb") as src:
    # as the product does: the old object's and the plaintext's digests are taken on the way
    if mode == "processes":  # the children read the file themselves and hash in their own processes
        streams = [ReencryptingReader(src, [identity], to, what="bench", digests=True)]
    else:
        old = HashingReader(src)
        decrypted = DecryptingReader(old, [identity], what="bench")
        streams = [EncryptingReader(HashingReader(decrypted), to), decrypted]
    new = HashingReader(streams[0])  # as the tier's put does
    buf = bytearray(1 << 20)
    while new.readinto(buf):
        pass
    for s in streams:
        s.close()
print(json.dumps({"seconds": time.perf_counter() - started}))
'''

CHILD = r'''
import json, resource, sys, time
from backup_tasks import config
from backup_tasks.ops import runtime
from backup_tasks.ops.keys import reencrypt, reencrypt_rewrite
cfg, backup_id, mode = sys.argv[1:4]
if mode == "threads":
    reencrypt_rewrite.REENCRYPT_PROCESSES_MIN_BYTES = 1 << 62
rt = runtime.install(runtime.Runtime(config.load(cfg)))
marks = {}
def progress(stage, done, total):
    marks.setdefault(stage, time.perf_counter())
def peak_rss_mib():
    # VmHWM, not ru_maxrss: exec keeps in ru_maxrss the high-water mark of the process that
    # forked this one (the benchmark, after the backups it ran in-process: ~200 MiB on S3)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
def cpu():  # this process's and its finished children's (the age children's) CPU seconds
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
cpu_before = cpu()
started = time.perf_counter()
result = reencrypt.reencrypt_backup(rt, backup_id, actor="bench", progress=progress)
ended = time.perf_counter()
cpu_seconds = cpu() - cpu_before
assert result["outcome"] == "reencrypted", result
print(json.dumps({"seconds": ended - started, "cpu_seconds": cpu_seconds, "rewrite_seconds": marks.get("verify", ended) - started,
                  "verify_seconds": ended - marks.get("verify", ended),
                  "peak_rss_mib": peak_rss_mib(),
                  "peak_rss_children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
'''


def write_config(path: Path, work: Path, recipient_file: Path, identities: Path, signing: Path, tree: Path,
                 tier: str | None = None) -> Path:
    """The benchmark's targets file: one files target on one tier, a local directory unless ``tier`` (TOML of a tier named "bench")."""
    tier = tier or f'[tiers.bench]\nkind = "local"\npath = "{work / "store"}"\n'
    path.write_text(
        "[settings]\n"
        f'staging_dir = "{work / "staging"}"\ncatalog_url = "sqlite:///{work / "catalog.db"}"\n'
        f'recipients_file = "{recipient_file}"\nidentities_file = "{identities}"\nsigning_key_file = "{signing}"\n'
        f'{tier}'
        f'[targets.bulk]\nkind = "files"\nhost = "bench"\npaths = ["{tree}"]\nstorage = ["bench"]\n')
    return path


def children_cpu() -> float:
    """CPU seconds (user + system) of every finished child process and its own children so far."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def checks_floor(obj: Path, old_identity: Path, new_recipient: str, new_identity: Path, out: Path) -> tuple[float, float]:
    """The checks a re-encryption owes, done by the standard tools alone: the least any implementation can take.

    The age pipe re-encrypts and proves nothing. The task must also hash the old object
    (it has to match the signed manifest, or a forged object would be re-signed), hash
    the plaintext and the new object (for the new manifest), make the new object durable,
    and decrypt it in full with the new identity to prove it opens. Here that is Go's
    ``age`` and OpenSSL's SHA-256, in parallel where the shell allows: wall and CPU seconds.
    """
    cat(obj)
    started, cpu = time.perf_counter(), children_cpu()
    digest = "openssl dgst -sha256 >/dev/null"
    subprocess.run(["bash", "-c", f"{digest} < {obj} & age -d -i {old_identity} {obj} | tee >({digest}) | "
                    f"age -r {new_recipient} | tee >({digest}) > {out}; wait; sync {out}; "
                    f"age -d -i {new_identity} {out} | {digest}"], check=True)
    seconds, used = time.perf_counter() - started, children_cpu() - cpu
    out.unlink()
    return seconds, used


def cat(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(8 * MiB):
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", action="store_true", help="also measure the two-thread pipeline")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--s3", action="store_true",
                    help="store on an S3 tier (a SeaweedFS `weed mini` of its own, as the tests run) instead of a local one; "
                         "the age pipe then works on a downloaded copy of the same object")
    ap.add_argument("--before", type=Path, default=None,
                    help="another checkout (e.g. the main branch): its whole task is measured too, interleaved, as mode 'before'")
    args = ap.parse_args()
    for tool in ("age",):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed on PATH (apt-get install age)")
    from backup_tasks import client, config
    from backup_tasks.ops import runtime
    from backup_tasks.records import keys

    work = Path(tempfile.mkdtemp(prefix="bench-reencrypt-", dir=args.workdir))
    server = tier = None
    if args.s3:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from s3server import SeaweedServer, s3_tier_toml

        server = SeaweedServer(work / "weed", work / "weed.log").start()
        bucket = server.make_bucket()
        os.environ.update(server.env())
        tier = s3_tier_toml(server, bucket, name="bench")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    try:
        tree = work / "tree"
        tree.mkdir()
        with open(tree / "data.bin", "wb") as fh:
            for _ in range(args.size_mib):
                fh.write(os.urandom(MiB))
        a, b = keys.generate(work / "keys-a"), keys.generate(work / "keys-b", signing=False)
        identities = work / "identities.txt"
        identities.write_text((a.directory / keys.IDENTITY_FILE).read_text() + (b.directory / keys.IDENTITY_FILE).read_text())
        os.chmod(identities, 0o600)
        signing = a.directory / keys.SIGNING_KEY_FILE
        cfg_a = write_config(work / "a.toml", work, a.directory / keys.RECIPIENT_FILE, identities, signing, tree, tier)
        cfg_b = write_config(work / "b.toml", work, b.directory / keys.RECIPIENT_FILE, identities, signing, tree, tier)
        modes = ["ours", *(["threads"] if args.threads else []), *(["before"] if args.before else [])]
        env_of = {m: env for m in modes}
        # ``python -c`` puts its working directory first on sys.path: each mode's child runs in
        # the checkout it measures, or a benchmark started in this checkout would measure it twice
        cwd_of = {m: str(HERE.parent) for m in modes}
        if args.before:
            env_of["before"] = {**os.environ, "PYTHONPATH": str(args.before.resolve())}
            cwd_of["before"] = str(args.before.resolve())
        runs: list[dict] = []
        for rep in range(args.repeat):
            for mode in modes:
                rt = runtime.install(runtime.Runtime(config.load(cfg_a)))
                backup = client.enqueue_backup("bulk", rt=rt).wait(timeout=600)
                obj = work / "store" / "bulk" / backup["id"] / rt.catalog.get(backup["id"]).manifest["stored"]["name"]
                if server is not None:  # the age pipe's input: the very stored bytes, fetched once
                    obj = work / "s3-copy.age"
                    server.client().download_file(bucket, rt.catalog.get(backup["id"]).locations[0].key, str(obj))
                load = os.getloadavg()[0]
                cat(obj)
                out = work / "baseline.age"
                started, cpu = time.perf_counter(), children_cpu()
                subprocess.run(f"age -d -i {a.directory / keys.IDENTITY_FILE} {obj} | age -r {b.recipient} > {out}",
                               shell=True, check=True)
                baseline, baseline_cpu = time.perf_counter() - started, children_cpu() - cpu
                fd = os.open(out, os.O_RDONLY)  # our local tier makes the new object durable; the pipe alone does not
                os.fsync(fd)
                os.close(fd)
                baseline_fsync = time.perf_counter() - started
                out.unlink()
                floor, floor_cpu = checks_floor(obj, a.directory / keys.IDENTITY_FILE, b.recipient, b.directory / keys.IDENTITY_FILE, out)
                pipes = {}
                for how in ("processes", "threads"):  # the decrypt → encrypt stream alone, hashes included, no disk
                    cat(obj)
                    piped = subprocess.run([sys.executable, "-c", PIPE_CHILD, str(obj), str(a.directory / keys.IDENTITY_FILE),
                                            b.recipient, how], env=env, capture_output=True, text=True, check=True)
                    pipes[how] = json.loads(piped.stdout.strip().splitlines()[-1])["seconds"]
                cat(obj)
                done = subprocess.run([sys.executable, "-c", CHILD, str(cfg_b), backup["id"], mode], env=env_of[mode],
                                      cwd=cwd_of[mode], capture_output=True, text=True, check=True)
                ours = json.loads(done.stdout.strip().splitlines()[-1])
                size = obj.stat().st_size if obj.exists() else backup["size_stored"]
                run = {"rep": rep, "mode": mode, "load_1min": round(load, 2), "object_bytes": size,
                       "baseline_seconds": round(baseline, 3), "baseline_fsync_seconds": round(baseline_fsync, 3),
                       "stream_processes_seconds": round(pipes["processes"], 3), "stream_threads_seconds": round(pipes["threads"], 3),
                       **{k: round(v, 3) for k, v in ours.items()},
                       "ratio_rewrite": round(baseline / ours["rewrite_seconds"], 3),
                       "ratio_whole_task": round(baseline / ours["seconds"], 3),
                       "baseline_cpu_seconds": round(baseline_cpu, 3),
                       "ratio_cpu_whole_task": round(baseline_cpu / ours["cpu_seconds"], 3),
                       "floor_seconds": round(floor, 3), "floor_cpu_seconds": round(floor_cpu, 3),
                       "ratio_floor": round(baseline / floor, 3)}
                runs.append(run)
                print(json.dumps(run), flush=True)
                shutil.rmtree(work / "store" / "bulk" / backup["id"], ignore_errors=True)
                if server is not None:
                    obj.unlink()
        summary = {}
        for mode in modes:
            mine = [r for r in runs if r["mode"] == mode]
            summary[mode] = {k: statistics.median(r[k] for r in mine) for k in (
                "baseline_seconds", "baseline_fsync_seconds", "stream_processes_seconds", "stream_threads_seconds", "rewrite_seconds", "verify_seconds", "seconds", "ratio_rewrite", "ratio_whole_task",
                "baseline_cpu_seconds", "cpu_seconds", "ratio_cpu_whole_task", "peak_rss_mib", "peak_rss_children_mib", "load_1min",
                "floor_seconds", "floor_cpu_seconds", "ratio_floor")}
        print("\nmedians:")
        both = {k: statistics.median(r[k] for r in runs) for k in ("baseline_seconds", "stream_processes_seconds",
                                                                    "stream_threads_seconds")}
        print(f"  stream alone: age pipe {both['baseline_seconds']:.2f} s | two processes {both['stream_processes_seconds']:.2f} s "
              f"({both['baseline_seconds'] / both['stream_processes_seconds']:.2f}x) | two threads "
              f"{both['stream_threads_seconds']:.2f} s ({both['baseline_seconds'] / both['stream_threads_seconds']:.2f}x)")
        floor = summary[modes[0]]
        print(f"  the task's checks by the tools alone: {floor['floor_seconds']:.2f} s, {floor['floor_cpu_seconds']:.2f} CPU-s "
              f"({floor['ratio_floor']:.2f}x the age pipe): the best any implementation of these checks can do here")
        for mode, s in summary.items():
            print(f"  {mode:8} age pipe {s['baseline_seconds']:.2f} s (+fsync {s['baseline_fsync_seconds']:.2f} s) | rewrite {s['rewrite_seconds']:.2f} s "
                  f"({s['ratio_rewrite']:.2f}x) | whole task {s['seconds']:.2f} s ({s['ratio_whole_task']:.2f}x, verify "
                  f"{s['verify_seconds']:.2f} s) | CPU {s['cpu_seconds']:.2f} s against the pipe's {s['baseline_cpu_seconds']:.2f} s "
                  f"({s['ratio_cpu_whole_task']:.2f}x) | peak RSS {s['peak_rss_mib']:.0f} MiB (age children "
                  f"{s['peak_rss_children_mib']:.0f} MiB) | load {s['load_1min']:.1f}")
        outdir = HERE / "out"
        outdir.mkdir(exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        (outdir / f"reencrypt-{stamp}.json").write_text(json.dumps({"size_mib": args.size_mib, "tier": "s3" if args.s3 else "local",
                                                                    "runs": runs,
                                                                    "medians": summary}, indent=2))
        print(f"written: benchmarks/out/reencrypt-{stamp}.json")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
