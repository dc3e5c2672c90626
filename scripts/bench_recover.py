#!/usr/bin/env python3
"""Benchmark: what `orchestrate recover` costs as batches accumulate.

On a throwaway PostgreSQL cluster (scripts/pg-cluster.sh) it makes M databases sharing one
chain (a template bind), runs K batches over all of them (`upgrade --all-binds +1`, each one
migration per bind), and after 1 batch and after K batches measures one `orchestrate recover`
with nothing to recover: its wall time and how many connections it opened, counted by the
server (the sum of pg_stat_database.sessions over the M databases, before and after).

Usage:
  scripts/bench_recover.py                          # M=50, K=100 (BENCHMARKS.md)
  scripts/bench_recover.py --binds 4 --batches 3 --binary target/debug/orchestrate
Prints a Markdown table.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def psql(url, sql):
    return run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", url, "-c", sql]).stdout.strip()


def with_db(url, db):
    return url.rsplit("/", 1)[0] + "/" + db


def sessions(admin, names):
    quoted = ",".join(f"'{n}'" for n in names)
    return int(psql(admin, f"SELECT coalesce(sum(sessions), 0) FROM pg_stat_database WHERE datname IN ({quoted})"))


def measure(binary, project, admin, names):
    before = sessions(admin, names)
    start = time.perf_counter()
    proc = subprocess.run([binary, "recover"], cwd=project, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"recover failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    # The statistics collector may lag a moment behind the sessions' ends.
    time.sleep(1.0)
    return seconds, sessions(admin, names) - before


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binds", type=int, default=50)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/orchestrate"))
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    cluster = tempfile.mkdtemp(prefix="orchestrate-bench-recover.")
    admin = run([os.path.join(ROOT, "scripts/pg-cluster.sh"), "start", cluster]).stdout.strip()
    try:
        names = [f"tenant_{i:04d}" for i in range(args.binds)]
        for n in names:
            psql(admin, f"CREATE DATABASE {n}")
        project = tempfile.mkdtemp(prefix="orchestrate-bench-recover-project.")
        os.makedirs(os.path.join(project, "config"))
        listed = ", ".join(f'"{n}"' for n in names)
        with open(os.path.join(project, "config/default.toml"), "w") as f:
            f.write(f'parallelism = 8\n[templates.tenant]\nurl = "{with_db(admin, "{name}")}"\nnames = [{listed}]\n')
        for v in range(1, args.batches + 1):
            d = os.path.join(project, "migrations/tenant", f"{v}_t{v}")
            os.makedirs(d)
            with open(os.path.join(d, "up.sql"), "w") as f:
                f.write(f"CREATE TABLE t{v} (id INT);\n")
            with open(os.path.join(d, "down.sql"), "w") as f:
                f.write(f"DROP TABLE t{v};\n")
        rows = []
        for k in range(1, args.batches + 1):
            run([binary, "upgrade", "--all-binds", "+1"], cwd=project)
            if k in (1, args.batches):
                seconds, conns = measure(binary, project, admin, names)
                rows.append((k, seconds, conns))
        print(f"| binds | batches run before | recover wall time | connections opened by recover |")
        print("|---|---|---|---|")
        for k, seconds, conns in rows:
            print(f"| {args.binds} | {k} | {seconds:.3f} s | {conns} |")
    finally:
        subprocess.run([os.path.join(ROOT, "scripts/pg-cluster.sh"), "stop", cluster])
        subprocess.run(["rm", "-rf", cluster])


if __name__ == "__main__":
    main()
