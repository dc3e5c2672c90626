#!/usr/bin/env python3
"""Re-applies, one at a time, the protocol bugs a mutation audit once found the suite missing
(issue 16), and checks that each now fails at least one test.

Each mutation is a literal text replacement in the current code. When the code moves, the
replacement is not found and this script says so (exit 2): update the mutation, do not drop it.

    python3 scripts/named-mutations.py            # every mutation
    python3 scripts/named-mutations.py xa-rollback  # one, by name

Each runs in a temporary git worktree of HEAD (the working tree is never touched), through
scripts/test.sh (which starts throwaway PostgreSQL and MariaDB servers), with the e2e tests of
the protocol, built in target/mutants (MUTANTS_TARGET_DIR; never a directory another build
uses at the same time). Takes about 2 minutes per mutation on 2 cores, after a first build. Exit 0 when every mutation is
caught, 1 when one survives.
"""
import os
import subprocess
import sys
import tempfile

REPO = subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip()
TESTS = ["-p", "orchestrate", "--test", "e2e", "--", "arbitration", "crash", "recover", "mysql"]

# (name, what the bug is, file, text, replacement)
MUTATIONS = [
    (
        "decider-row-not-held",
        "the decider never holds its batch's row (once: its session was never tagged), so "
        "recover cannot see a live coordinator",
        "crates/driver/src/participant/postgres.rs",
        "        self.hold_decision(batch_id)?;\n        self.lock_and_tables(started)\n",
        "        let _ = batch_id;\n        self.lock_and_tables(started)\n",
    ),
    (
        "sqlite-decider-always-gone",
        "a SQLite decider always counts as gone (its write lock is never probed)",
        "crates/driver/src/participant/sqlite.rs",
        'let held = match s.conn.batch_execute("BEGIN IMMEDIATE") {',
        'let held = match s.conn.batch_execute("SELECT 1") {',
    ),
    (
        "decision-after-commit",
        "the decision is written after the decider's COMMIT instead of inside its transaction",
        "crates/orchestrator/src/coordinator.rs",
        "        .and_then(|()| Ok(decider_conn.decide_commit(record, &now_text())?))\n",
        "        .and_then(|()| Ok(decider_conn.commit()?))\n"
        "        .and_then(|()| Ok(decider_conn.decide_commit(record, &now_text())?))\n"
        "        .and_then(|()| Ok(decider_conn.begin_batch()?))\n",
    ),
    (
        "commit-lost-not-in-doubt",
        "a connection lost during the decider's COMMIT is treated as a failure (roll back) "
        "instead of leaving the batch in doubt",
        "crates/orchestrator/src/coordinator.rs",
        "Err(error) if error.is_connection_lost() => {\n                    drop(running);",
        "Err(error) if false && error.is_connection_lost() => {\n                    drop(running);",
    ),
    (
        "xa-rollback-never-sent",
        "XA ROLLBACK is never sent",
        "crates/driver/src/participant/xa.rs",
        'self.xa_finish(gid, "ROLLBACK")',
        "{ let _ = gid; Ok(()) }",
    ),
    (
        "prepare-not-verified",
        "PREPARE TRANSACTION is not checked in pg_prepared_xacts",
        "crates/driver/src/participant/postgres.rs",
        "if found.n != 1 {",
        "if found.n != 1 && false {",
    ),
]


def run(name, what, path, text, replacement, target_dir, commit):
    with tempfile.TemporaryDirectory(prefix="orchestrate-mutant-") as tmp:
        tree = os.path.join(tmp, "tree")
        subprocess.run(["git", "worktree", "add", "--detach", "-q", tree, commit], cwd=REPO, check=True)
        try:
            file = os.path.join(tree, path)
            source = open(file).read()
            if source.count(text) != 1:
                print(f"{name}: the code to mutate is not found (once) in {path}; update this script")
                return None
            open(file, "w").write(source.replace(text, replacement))
            env = dict(os.environ, CARGO_TARGET_DIR=target_dir)
            log = os.path.join(tmp, "log")
            with open(log, "w") as out:
                code = subprocess.run(["scripts/test.sh", *TESTS], cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
            text_log = open(log).read()
            if "could not compile" in text_log:
                print(f"{name}: the mutant does not compile; update this script")
                return None
            failed = [l.split()[1] for l in text_log.splitlines() if l.startswith("test ") and l.endswith("FAILED")]
            caught = code != 0 and bool(failed)
            print(f"{name}: {'caught' if caught else 'MISSED'} ({what}){': ' + ', '.join(failed[:6]) if failed else ''}", flush=True)
            return caught
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=REPO)


def main():
    chosen = [m for m in MUTATIONS if len(sys.argv) < 2 or m[0] in sys.argv[1:]]
    # A target directory of its own: a build of the project running meanwhile writes the same
    # binary paths, and tests would run the other build's binary.
    target_dir = os.environ.get("MUTANTS_TARGET_DIR", os.path.join(REPO, "target", "mutants"))
    # Every mutation of one run applies to the same commit, even if HEAD moves meanwhile.
    commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=REPO, text=True).strip()
    print(f"mutating {commit}", flush=True)
    results = [run(*m, target_dir, commit) for m in chosen]
    if any(r is None for r in results):
        sys.exit(2)
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
