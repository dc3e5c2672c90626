#!/usr/bin/env python3
"""Benchmark: orchestrate against the floor, on a throwaway PostgreSQL cluster.

For each size (M databases, N migrations each) it measures, in one run:
  atomic      orchestrate upgrade --all-binds (one atomic batch over all M binds)
  one-by-one  the same tool applying the binds one at a time (M separate runs)
  psql floor  the same migration SQL sent by psql: one transaction per database ended by
              PREPARE TRANSACTION, then COMMIT PREPARED, with the same parallelism (one psql
              process, hence one connection, per step: not a floor, kept for comparison)
  libpq floor the same SQL from one libpq client (crates/orchestrator/examples/libpq_floor.rs):
              per database one connection, BEGIN + SQL + PREPARE TRANSACTION in one round
              trip, COMMIT PREPARED on the same connection (reconnecting only beyond the
              server's connection budget), same parallelism, no bookkeeping at all
  peer        Flask-Migrate's multidb upgrade with two-phase commit on (USE_TWOPHASE = True in
              its env.py), the tool these users would otherwise pick: a Python virtual
              environment with flask-migrate and psycopg2-binary is made on first use (under
              ~/.cache/orchestrate-bench); same migration SQL. It keeps one connection per
              database open for the whole run, so it is measured only where M fits the
              server's max_connections
  rollout     orchestrate upgrade --all-binds --wave-size W (waves of W binds, one after the
              other): its time, and the longest any bind held its locks, next to the single
              batch's (both from --json's max_lock_hold_ms)
  status      orchestrate status --json over all M binds, after the upgrade
  serve       orchestrate serve's refresh of the overview (status of every bind, in one
              long-running process), first with its kept read connections (--pool-per-server
              M, capped by the server at a quarter of its connections), then with none
              (--pool-per-server 0): the median of three refreshes after the first, in the first
              round only
  no-op       orchestrate upgrade --all-binds --json again, with nothing left to do
  peak RSS    the largest resident set of the atomic upgrade and of status (ru_maxrss)

Usage:
  scripts/bench.py                       # the sizes of BENCHMARKS.md: 64x20 and 1000x5
  scripts/bench.py --sizes 4x2 --repeat 1 --binary target/debug/orchestrate   # CI smoke run
It starts its own cluster (scripts/pg-cluster.sh) unless --pg-url names a server whose
max_prepared_transactions covers M. Prints a Markdown table.
"""

import argparse
import concurrent.futures as cf
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME = "/usr/bin/time"


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def timed_child(cmd, cwd, env=None, output=False):
    """Runs a command; returns (seconds, peak RSS in MiB of that process), and its stdout when
    `output`.

    The peak comes from GNU time, which forks the command from its own small process: a
    child forked from this Python process would report Python's resident set as its own
    (Linux keeps ru_maxrss across fork and exec).
    """
    with tempfile.NamedTemporaryFile("r") as rss, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.run([TIME, "-f", "%M", "-o", rss.name] + cmd, cwd=cwd, env=env, stdout=out, stderr=err)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            out.seek(0)
            err.seek(0)
            sys.exit(f"bench: {' '.join(cmd)} failed ({proc.returncode}):\n{out.read().decode()}\n{err.read().decode()}")
        kib = int(rss.read().strip().splitlines()[-1])
        if output:
            out.seek(0)
            return seconds, kib / 1024.0, out.read().decode()
    return seconds, kib / 1024.0


FLASK_APP = """import json, os
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_migrate import Migrate
urls = json.load(open(os.environ["BENCH_URLS"]))
app = Flask(__name__)
# The first database is the default engine, the others are binds: each is migrated once.
app.config["SQLALCHEMY_DATABASE_URI"] = urls[0]
app.config["SQLALCHEMY_BINDS"] = {f"b{i}": u for i, u in enumerate(urls) if i > 0}
db = SQLAlchemy(app)
migrate = Migrate(app, db)
"""


def flask_peer(project, urls, n):
    """Sets up Flask-Migrate's multidb project over `urls` with `n` migrations (the same SQL);
    returns a function timing one `flask db upgrade`, or a string saying why it cannot run."""
    venv = os.path.join(os.path.expanduser("~"), ".cache", "orchestrate-bench", "flask")
    flask = os.path.join(venv, "bin", "flask")
    if not os.path.exists(flask):
        try:
            run([sys.executable, "-m", "venv", venv])
            run([os.path.join(venv, "bin", "pip"), "install", "-q", "flask-migrate", "psycopg2-binary"])
        except subprocess.CalledProcessError as e:
            return f"not installable here ({(e.stderr or '').strip().splitlines()[-1:]})"
    d = os.path.join(project, "flask")
    os.makedirs(d)
    with open(os.path.join(d, "app.py"), "w") as f:
        f.write(FLASK_APP)
    with open(os.path.join(d, "urls.json"), "w") as f:
        json.dump([u.replace("postgres://", "postgresql+psycopg2://", 1) for u in urls], f)
    env = dict(os.environ, BENCH_URLS=os.path.join(d, "urls.json"))
    run([flask, "--app", "app", "db", "init", "--multidb"], cwd=d, env=env)
    env_py = os.path.join(d, "migrations", "env.py")
    with open(env_py) as f:
        text = f.read()
    with open(env_py, "w") as f:
        f.write(text.replace("USE_TWOPHASE = False", "USE_TWOPHASE = True"))
    for v in range(1, n + 1):
        prev = "None" if v == 1 else repr(f"r{v - 1}")
        with open(os.path.join(d, "migrations", "versions", f"r{v}.py"), "w") as f:
            f.write(
                f"from alembic import op\nrevision = 'r{v}'\ndown_revision = {prev}\n"
                f"branch_labels = None\ndepends_on = None\nSQL = {migration_sql(v)!r}\n"
                f"def upgrade(engine_name):\n    op.execute(SQL)\n"
                f"def downgrade(engine_name):\n    op.execute('DROP TABLE t{v}')\n"
            )

    def once():
        start = time.perf_counter()
        run([flask, "--app", "app", "db", "upgrade"], cwd=d, env=env)
        return time.perf_counter() - start

    return once


def rollout_waves(project):
    """The waves of the project's last rollout, from its record."""
    with open(os.path.join(project, ".orchestrate", "rollout.json")) as f:
        return json.load(f)["waves"]


def serve_refresh(binary, project, per_server):
    """`orchestrate serve bench` over every bind with --pool-per-server per_server: the median
    of three refreshes after the first (seconds), and its read_connections."""
    open(os.path.join(project, "config/bench.toml"), "w").close()
    proc = subprocess.Popen([binary, "serve", "bench", "--listen", "127.0.0.1:0", "--refresh", "1",
                             "--pool-per-server", str(per_server)],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    took, seen, stats = [], None, None
    try:
        first = proc.stdout.readline()
        base = "http://" + first.split("listening on http://")[1].split("/")[0]
        deadline = time.time() + 900
        while len(took) < 4:
            if time.time() > deadline:
                sys.exit(f"bench: serve never refreshed four times: {took}")
            v = json.load(urllib.request.urlopen(base + "/api/overview"))
            if v["read_at"] != seen:
                seen = v["read_at"]
                took.append(v["took_ms"] / 1000.0)
                stats = v["read_connections"]
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait()
        os.remove(os.path.join(project, "config/bench.toml"))
    return sorted(took[1:])[1], stats


def psql(url, sql):
    return run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql])


def migration_sql(v):
    return (
        f"CREATE TABLE t{v} (id INT PRIMARY KEY, a INT NOT NULL, b TEXT);\n"
        f"CREATE INDEX t{v}_a ON t{v} (a);\n"
        f"INSERT INTO t{v} SELECT g, g % 7, md5(g::text) FROM generate_series(1, 50) g;\n"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64x20,1000x5", help="MxN,... (databases x migrations)")
    ap.add_argument("--parallelism", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is kept")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/orchestrate"))
    ap.add_argument("--pg-url", help="an admin URL of a server to use instead of a throwaway cluster")
    ap.add_argument("--wave-size", type=int, default=50, help="the rollout's wave size (W)")
    ap.add_argument("--keep", type=int, default=150,
                    help="connections the libpq floor, and orchestrate (keep_connections), keep open for COMMIT PREPARED (under max_connections)")
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    if not os.path.exists(binary):
        sys.exit(f"bench: {binary} not found; run `cargo build --release` (or pass --binary)")
    # The libpq floor, built with the binary's profile.
    profile = os.path.basename(os.path.dirname(binary))
    floor = os.path.join(os.path.dirname(binary), "examples", "libpq_floor")
    build = ["cargo", "build", "--locked", "-p", "orchestrate", "--example", "libpq_floor"]
    if profile == "release":
        build.append("--release")
    print(f"bench: {' '.join(build)}", file=sys.stderr)
    subprocess.run(build, cwd=ROOT, check=True)
    if not os.path.exists(floor):
        sys.exit(f"bench: {floor} not found after building it")
    args.floor = floor
    if not os.path.exists(TIME):
        if os.geteuid() != 0:
            sys.exit("bench: GNU time (/usr/bin/time) is needed to measure peak memory; install the `time` package")
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", "time"])
    if not shutil.which("psql"):
        sys.exit("bench: psql not found (Debian: postgresql-client)")

    cluster = None
    admin = args.pg_url
    if not admin:
        cluster = tempfile.mkdtemp(prefix="orchestrate-bench-pg.")
        env = dict(os.environ, PG_MAX_PREPARED="1100", PG_MAX_CONNECTIONS="200")
        admin = run([os.path.join(ROOT, "scripts/pg-cluster.sh"), "start", cluster], env=env).stdout.strip()
    base = admin.rsplit("/", 1)[0]
    rows = []
    try:
        for size in args.sizes.split(","):
            m, n = (int(x) for x in size.split("x"))
            rows.append(bench_size(m, n, args, binary, admin, base))
    finally:
        if cluster:
            subprocess.run([os.path.join(ROOT, "scripts/pg-cluster.sh"), "stop", cluster])
            shutil.rmtree(cluster, ignore_errors=True)

    print()
    print()
    print("| binds x migrations | atomic upgrade | Flask-Migrate multidb, two-phase | atomic / Flask-Migrate |")
    print("|---|---|---|---|")
    for r in rows:
        if isinstance(r["peer"], float):
            print(f"| {r['m']} x {r['n']} | {r['atomic']:.2f} s | {r['peer']:.2f} s | {r['atomic'] / r['peer']:.2f}x |")
        else:
            print(f"| {r['m']} x {r['n']} | {r['atomic']:.2f} s | {r['peer']} | |")
    print()
    print("| binds x migrations | atomic upgrade | one bind at a time | libpq floor | atomic / libpq floor | psql (PREPARE + COMMIT PREPARED) | status (all binds) | status floor (connections alone) | status / floor | no-op upgrade | no-op / floor | peak RSS upgrade | peak RSS status |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['m']} x {r['n']} | {r['atomic']:.2f} s | {r['serial']:.2f} s | {r['libpq']:.2f} s | "
            f"{r['atomic'] / r['libpq']:.2f}x | {r['floor']:.2f} s | {r['status']:.3f} s | {r['status_floor']:.3f} s | "
            f"{r['status'] / r['status_floor']:.2f}x | {r['noop']:.3f} s | {r['noop'] / r['status_floor']:.2f}x | "
            f"{r['rss_up']:.1f} MiB | {r['rss_status']:.1f} MiB |"
        )
    print()
    print("| binds x migrations | status (new process) | serve refresh, kept connections | binds that kept one | serve refresh, none kept | status floor (connections alone) | kept refresh / status floor |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['m']} x {r['n']} | {r['status']:.3f} s | {r['serve_kept']:.3f} s | {r['serve_stats']['pooled_binds']} | "
            f"{r['serve_fresh']:.3f} s | {r['status_floor']:.3f} s | {r['serve_kept'] / r['status_floor']:.2f}x |"
        )
    print()
    print(f"| binds x migrations | one batch | its longest lock hold | rollout, waves of {args.wave_size} | its longest lock hold | longest wave | longest hold / longest wave | rollout / one batch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['m']} x {r['n']} | {r['atomic']:.2f} s | {r['hold_atomic'] / 1000:.2f} s | {r['rollout']:.2f} s | "
            f"{r['hold_rollout'] / 1000:.2f} s | {r['wave'] / 1000:.2f} s | {r['hold_rollout'] / max(r['wave'], 1):.2f}x | "
            f"{r['rollout'] / r['atomic']:.2f}x |"
        )


def bench_size(m, n, args, binary, admin, base):
    tag = f"b{os.getpid()}_{m}x{n}"
    names = [f"{tag}_{i:04d}" for i in range(m)]
    urls = [f"{base}/{name}" for name in names]
    print(f"bench: {m} databases x {n} migrations: creating databases", file=sys.stderr)
    pool = cf.ThreadPoolExecutor(max_workers=args.parallelism)
    list(pool.map(lambda name: psql(admin, f"CREATE DATABASE {name}"), names))

    project = tempfile.mkdtemp(prefix="orchestrate-bench.")
    os.makedirs(os.path.join(project, "config"))
    with open(os.path.join(project, "config/default.toml"), "w") as f:
        # The same connection budget as the libpq floor: sessions kept open for COMMIT PREPARED.
        f.write(f"parallelism = {args.parallelism}\nlock_timeout_ms = 60000\nkeep_connections = {args.keep}\n")
        f.write(f'[templates.db]\nurl = "{base}/{{name}}"\nmigrations = "migrations/db"\nnames = [{", ".join(repr(x).replace(chr(39), chr(34)) for x in names)}]\n')
    for v in range(1, n + 1):
        d = os.path.join(project, "migrations/db", f"{v}_m{v}")
        os.makedirs(d)
        with open(os.path.join(d, "up.sql"), "w") as f:
            f.write(migration_sql(v))
        with open(os.path.join(d, "down.sql"), "w") as f:
            f.write(f"DROP TABLE t{v};\n")
    floor_sql = "BEGIN;\n" + "".join(migration_sql(v) for v in range(1, n + 1))
    sql_file = os.path.join(project, "floor.sql")
    with open(sql_file, "w") as f:
        f.write("".join(migration_sql(v) for v in range(1, n + 1)))
    urls_file = os.path.join(project, "urls.txt")
    with open(urls_file, "w") as f:
        f.write("\n".join(urls) + "\n")

    def libpq_once():
        out = run([args.floor, str(args.parallelism), str(args.keep), sql_file, urls_file]).stdout
        return float(out.strip())

    def reset():
        list(pool.map(lambda u: psql(u, "DROP SCHEMA public CASCADE; CREATE SCHEMA public;"), urls))

    def floor_once():
        start = time.perf_counter()

        def prepare(i):
            sql = floor_sql + f"PREPARE TRANSACTION 'floor_{names[i]}';\n"
            run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", urls[i]], input=sql)

        list(pool.map(prepare, range(m)))
        list(pool.map(lambda i: psql(urls[i], f"COMMIT PREPARED 'floor_{names[i]}'"), range(m)))
        return time.perf_counter() - start

    # The status floor: new connections per second this server accepts at this parallelism
    # (pgbench -C running `SELECT 1`), since reading a database needs a connection to it.
    pgbench = shutil.which("pgbench") or next(
        (p for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True)), None
    )
    connect_rate = None
    if pgbench:
        with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
            script.write("SELECT 1;\n")
            script.flush()
            per_client = max(1, -(-m // args.parallelism))
            out = run([pgbench, "-n", "-C", "-c", str(args.parallelism), "-j", str(min(args.parallelism, os.cpu_count() or 1)),
                       "-t", str(per_client), "-f", script.name, urls[0]]).stdout
            for line in out.splitlines():
                if line.startswith("tps"):
                    connect_rate = float(line.split("=")[1].split()[0])

    # The peer holds a connection per database for its whole run.
    peer = flask_peer(project, urls, n) if m <= 150 else (
        f"not measured: it keeps {m} connections open at once, over this server's max_connections (200)")
    results = {"flask": [], "atomic": [], "serial": [], "floor": [], "libpq": [], "status": [], "noop": [], "rollout": [],
               "hold_atomic": [], "hold_rollout": [], "wave": [], "serve_kept": [], "serve_fresh": []}
    serve_stats = None
    rss_up = rss_status = 0.0
    for r in range(args.repeat):
        print(f"bench: {m}x{n} run {r + 1}/{args.repeat}", file=sys.stderr)
        reset()
        t, rss, out = timed_child([binary, "upgrade", "--all-binds", "--json"], project, output=True)
        results["atomic"].append(t)
        results["hold_atomic"].append(json.loads(out)["max_lock_hold_ms"])
        rss_up = max(rss_up, rss)
        t, rss = timed_child([binary, "status", "--json"], project)
        results["status"].append(t)
        rss_status = max(rss_status, rss)
        t, _ = timed_child([binary, "upgrade", "--all-binds", "--json"], project)
        results["noop"].append(t)
        if r == 0:
            kept, stats = serve_refresh(binary, project, m)
            results["serve_kept"].append(kept)
            results["serve_fresh"].append(serve_refresh(binary, project, 0)[0])
            serve_stats = stats
        reset()
        start = time.perf_counter()
        for i in range(m):
            timed_child([binary, "upgrade", "--bind", f"db_{names[i]}"], project)
        results["serial"].append(time.perf_counter() - start)
        reset()
        results["floor"].append(floor_once())
        reset()
        results["libpq"].append(libpq_once())
        if callable(peer):
            reset()
            results["flask"].append(peer())
        reset()
        t, _, out = timed_child([binary, "upgrade", "--all-binds", "--wave-size", str(args.wave_size), "--json"],
                                project, output=True)
        rollout = json.loads(out)
        results["rollout"].append(t)
        results["hold_rollout"].append(rollout["max_lock_hold_ms"])
        results["wave"].append(max(w["elapsed_ms"] for w in rollout_waves(project)))
    list(pool.map(lambda name: psql(admin, f"DROP DATABASE {name} WITH (FORCE)"), names))
    shutil.rmtree(project, ignore_errors=True)

    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2]

    row = {k: median(v) for k, v in results.items() if v}
    row["peer"] = row.get("flask") or peer
    row.update(m=m, n=n, rss_up=rss_up, rss_status=rss_status, serve_stats=serve_stats,
               status_floor=(m / connect_rate) if connect_rate else float("nan"))
    print(f"bench: {row}", file=sys.stderr)
    return row


if __name__ == "__main__":
    main()
