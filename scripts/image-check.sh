#!/usr/bin/env bash
# Checks the Dockerfile's runtime stage without Docker: builds a Debian root filesystem like the
# stage's base image, installs the stage's apt packages, copies in an `orchestrate` binary and
# runs it there with chroot, as root, in /project (a copy of config/ and migrations/).
#
#   scripts/image-check.sh PATH/TO/orchestrate
#
# The binary should be built as the Dockerfile's build stage builds it:
#   cargo install --locked --path crates/orchestrator --features bundled --root DIR
# Run as root (debootstrap, chroot, mount). Needs deb.debian.org; installs debootstrap with
# apt-get when missing.
#
# What it checks:
#   - the runtime stage is `FROM debian:<suite>-slim`, and the build stage's image names the same
#     Debian release (a binary built on a newer glibc than the runtime has does not start);
#   - `apt-get install` of exactly the stage's packages (read from the Dockerfile's last stage,
#     so the check follows the Dockerfile) succeeds on a fresh `debootstrap --variant=minbase`
#     of <suite> (the variant debian:<suite>-slim is made from), with <suite>-updates and
#     <suite>-security enabled as in the image;
#   - `ldd /usr/local/bin/orchestrate` there finds every library, and none of them is libpq,
#     libmariadb or libmysqlclient (the client libraries must be built in);
#   - the image has a CA bundle (/etc/ssl/certs/ca-certificates.crt);
#   - `orchestrate --help`, `--version`, then the main job on config/default.toml's SQLite binds:
#     `upgrade --all-binds`, `status`, `check`, a second `upgrade --all-binds` (nothing to do),
#     each exiting 0, and the three SQLite files exist afterwards;
#   - optionally, when a PostgreSQL accepts connections on 127.0.0.1:5432 as user postgres
#     without a password: `orchestrate status --bind users` with
#     ORCHESTRATE__BINDS__USERS__URL=postgres://postgres@127.0.0.1:5432/DB?sslmode=require, which
#     only succeeds if the built-in libpq's network and TLS code works in the image (DB is a
#     throwaway database made with the host's psql when there is one, else `postgres`). Set
#     IMAGE_CHECK_PG=0 to skip it.
# Informational only: which libraries the binary would lack in the bare base image (what the
# package list has to provide).
#
# What it cannot check: the Docker build itself (the build stage, `COPY . .` and
# .dockerignore, layer caching), the exact bytes of the debian:<suite>-slim image (a minbase
# debootstrap of the same suite as of today, not the tag's snapshot, with docs and locales
# kept), ENTRYPOINT/CMD/WORKDIR handling, a bind mount of the project owned by another user,
# Docker's network namespace (`--network host` is what the chroot has), MySQL/MariaDB binds at
# run time, and verification of a server certificate against the CA bundle.
#
# The debootstrap result is cached in ~/.cache/orchestrate-image/<suite>/ (remove it to start
# over); each run works on a copy in a temporary folder, removed at the end (IMAGE_CHECK_KEEP=1
# keeps it and prints where).
set -euo pipefail

say() { echo "image-check: $*" >&2; }
die() { say "$*"; exit 2; }

[ $# -ge 1 ] || die "usage: $0 PATH/TO/orchestrate"
BIN=$(readlink -f "$1")
[ -f "$BIN" ] && [ -x "$BIN" ] || die "$1 is not an executable file"
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mount need it)"

REPO=$(cd "$(dirname "$0")/.." && pwd)
DOCKERFILE=${DOCKERFILE:-$REPO/Dockerfile}
[ -f "$DOCKERFILE" ] || die "no Dockerfile at $DOCKERFILE"

results=()
failed=0
pass() { results+=("PASS  $*"); say "PASS  $*"; }
fail() { results+=("FAIL  $*"); say "FAIL  $*"; failed=1; }
skip() { results+=("SKIP  $*"); say "SKIP  $*"; }
info() { results+=("INFO  $*"); say "INFO  $*"; }

# --- Read the Dockerfile ---------------------------------------------------------------------
# Instructions with their continuation lines joined, comments dropped; one per line.
instructions=$(sed -e 's/\r$//' -e '/^[[:space:]]*#/d' "$DOCKERFILE" \
  | sed -e ':a' -e '/\\$/{N;s/\\\n/ /;ba' -e '}' | grep -v '^[[:space:]]*$')
from_lines=$(grep -iE '^[[:space:]]*FROM[[:space:]]' <<<"$instructions" || true)
[ "$(wc -l <<<"$from_lines")" -ge 2 ] || die "expected a build stage and a runtime stage in $DOCKERFILE"
image_of() { awk '{ for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; exit } }'; }
build_image=$(head -n1 <<<"$from_lines" | image_of)
runtime_image=$(tail -n1 <<<"$from_lines" | image_of)
[[ $runtime_image =~ ^debian:([a-z]+)-slim$ ]] \
  || die "the runtime stage's base image is '$runtime_image', not debian:<suite>-slim"
SUITE=${BASH_REMATCH[1]}
# The last stage: everything after the last FROM.
last_stage=$(awk 'tolower($0) ~ /^[[:space:]]*from[[:space:]]/ { s = "" } { s = s $0 "\n" } END { printf "%s", s }' <<<"$instructions")
install_cmd=$(grep -oE 'apt-get[[:space:]]+install[^&;|]*' <<<"$last_stage" | head -n1 || true)
[ -n "$install_cmd" ] || die "no 'apt-get install' in the runtime stage of $DOCKERFILE"
read -r -a words <<<"$install_cmd"
apt_opts=() packages=()
for w in "${words[@]:2}"; do
  if [[ $w == -* ]]; then apt_opts+=("$w"); else packages+=("$w"); fi
done
[ ${#packages[@]} -gt 0 ] || die "no packages in '$install_cmd'"
say "Dockerfile: build stage $build_image, runtime stage $runtime_image (suite $SUITE)"
say "runtime packages: ${packages[*]} (apt-get install ${apt_opts[*]})"

# The build stage's Debian release must be the runtime's (glibc and OpenSSL sonames).
build_suite=""
for s in buster bullseye bookworm trixie forky sid; do
  [[ $build_image == *"$s"* ]] && build_suite=$s
done
if [ -z "$build_suite" ]; then
  fail "build stage image $build_image names no Debian release; cannot match it to $SUITE"
elif [ "$build_suite" = "$SUITE" ]; then
  pass "build stage ($build_image) and runtime stage ($runtime_image) are both Debian $SUITE"
else
  fail "build stage is Debian $build_suite ($build_image) but runtime is $SUITE ($runtime_image)"
fi

# --- The cached base root filesystem ---------------------------------------------------------
MIRROR=${IMAGE_CHECK_MIRROR:-http://deb.debian.org/debian}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/orchestrate-image/$SUITE
if ! command -v debootstrap >/dev/null 2>&1; then
  say "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
fi
if [ ! -f "$CACHE/root/.image-check-complete" ]; then
  say "debootstrap --variant=minbase $SUITE into $CACHE/root (once; a few minutes)"
  rm -rf --one-file-system "$CACHE/root.partial"
  mkdir -p "$CACHE"
  debootstrap --variant=minbase "$SUITE" "$CACHE/root.partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $CACHE/debootstrap.log"
  # As in the debian image: the release, its updates and its security archive.
  security_mirror=${IMAGE_CHECK_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
  {
    echo "deb $MIRROR $SUITE main"
    [ "$SUITE" = sid ] || echo "deb $MIRROR $SUITE-updates main"
    [ "$SUITE" = sid ] || echo "deb $security_mirror $SUITE-security main"
  } >"$CACHE/root.partial/etc/apt/sources.list"
  rm -rf "$CACHE/root.partial/var/cache/apt/archives/"*.deb
  touch "$CACHE/root.partial/.image-check-complete"
  mv "$CACHE/root.partial" "$CACHE/root"
fi

# --- A fresh copy for this run ---------------------------------------------------------------
WORK=$(mktemp -d /tmp/orchestrate-image.XXXXXX)
ROOT=$WORK/root
PGDB=""
cleanup() {
  local rc=$? m
  for m in "$ROOT/dev" "$ROOT/proc"; do
    if mountpoint -q "$m" 2>/dev/null; then
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "could not unmount $m"
    fi
  done
  if [ -n "$PGDB" ]; then
    psql -h 127.0.0.1 -p 5432 -U postgres -w -q -d postgres -c "DROP DATABASE IF EXISTS \"$PGDB\"" >/dev/null 2>&1 || true
  fi
  if [ "${IMAGE_CHECK_KEEP:-0}" = 1 ]; then
    say "kept $ROOT"
  elif mountpoint -q "$ROOT/dev" 2>/dev/null || mountpoint -q "$ROOT/proc" 2>/dev/null; then
    say "left $WORK in place: something is still mounted in it"
  else
    rm -rf --one-file-system "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp -a "$CACHE/root" "$ROOT"
rm -f "$ROOT/.image-check-complete"
mkdir -p "$CACHE/archives"
cp -a "$CACHE/archives/." "$ROOT/var/cache/apt/archives/" 2>/dev/null || true
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
mount -t proc proc "$ROOT/proc" 2>/dev/null || mount --bind /proc "$ROOT/proc"
mount --bind /dev "$ROOT/dev"

# A clean environment, as `docker run` gives (the image's PATH, HOME of root), in /project.
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
in_image() { chroot "$ROOT" /usr/bin/env -i PATH="$IMAGE_PATH" HOME=/root "$@"; }
OUT=$WORK/out
# run NAME EXPECTED_EXIT CMD...: runs CMD in the image in /project, records PASS or FAIL.
run() {
  local name=$1 want=$2 rc=0
  shift 2
  in_image /bin/sh -c 'cd /project && exec "$@"' sh "$@" >"$OUT" 2>&1 || rc=$?
  head -n 40 "$OUT" | sed 's/^/    | /' >&2  # head first: a longer output never SIGPIPEs sed under pipefail
  if [ "$rc" = "$want" ]; then pass "$name (exit $rc)"; else fail "$name: exit $rc, expected $want"; fi
  return 0
}

install -D -m 0755 "$BIN" "$ROOT/usr/local/bin/orchestrate"

# Informational: what the bare base image lacks for this binary.
bare_missing=$(in_image ldd /usr/local/bin/orchestrate 2>&1 | awk '/not found/ { print $1 }' | tr '\n' ' ' || true)
info "without the runtime packages the base image lacks: ${bare_missing:-nothing}"

say "apt-get update && apt-get install ${apt_opts[*]} ${packages[*]} (in the image)"
if in_image DEBIAN_FRONTEND=noninteractive sh -c 'apt-get update -qq && apt-get install "$@"' sh \
  "${apt_opts[@]}" "${packages[@]}" >"$WORK/apt.log" 2>&1; then
  pass "apt-get install ${packages[*]} on $SUITE minbase"
  cp -a "$ROOT/var/cache/apt/archives/"*.deb "$CACHE/archives/" 2>/dev/null || true
  # Keep the package lists fresh in the cache, so the next run's `apt-get update` is short.
  rm -rf "$CACHE/root/var/lib/apt/lists"
  cp -a "$ROOT/var/lib/apt/lists" "$CACHE/root/var/lib/apt/lists"
else
  tail -n 20 "$WORK/apt.log" | sed 's/^/    | /' >&2
  fail "apt-get install ${packages[*]} on $SUITE minbase (see above)"
fi
rm -rf "$ROOT/var/lib/apt/lists/"*  # as the Dockerfile does

# --- The binary's libraries ------------------------------------------------------------------
ldd_out=$(in_image ldd /usr/local/bin/orchestrate 2>&1) || true
sed 's/^/    | /' <<<"$ldd_out" >&2
if grep -q 'not found' <<<"$ldd_out"; then
  fail "ldd: missing $(awk '/not found/ { print $1 }' <<<"$ldd_out" | tr '\n' ' ')"
elif ! grep -q '=>' <<<"$ldd_out"; then
  fail "ldd printed no libraries (not a dynamic executable for this image?)"
else
  pass "ldd: every library found ($(grep -c '=>' <<<"$ldd_out") libraries)"
fi
if grep -qiE 'libpq|libmariadb|libmysqlclient' <<<"$ldd_out"; then
  fail "ldd: links a system client library: $(grep -oiE 'lib(pq|mariadb|mysqlclient)[^ ]*' <<<"$ldd_out" | sort -u | tr '\n' ' ')"
else
  pass "ldd: no libpq, libmariadb or libmysqlclient (client libraries built in)"
fi
if [ -s "$ROOT/etc/ssl/certs/ca-certificates.crt" ]; then
  pass "CA bundle /etc/ssl/certs/ca-certificates.crt present ($(grep -c 'BEGIN CERTIFICATE' "$ROOT/etc/ssl/certs/ca-certificates.crt") certificates)"
else
  fail "no CA bundle at /etc/ssl/certs/ca-certificates.crt"
fi

# --- The main job on the default SQLite binds ------------------------------------------------
mkdir -p "$ROOT/project"
cp -a "$REPO/config" "$REPO/migrations" "$ROOT/project/"
run "orchestrate --help" 0 orchestrate --help
# --version is tried when --help lists it, or when --help itself failed (then it fails too).
if grep -q -- '--version' "$OUT" || [[ ${results[-1]} == FAIL* ]]; then
  run "orchestrate --version" 0 orchestrate --version
else
  skip "orchestrate --version (not in --help)"
fi
run "orchestrate upgrade --all-binds (SQLite binds of config/default.toml)" 0 orchestrate upgrade --all-binds
run "orchestrate status" 0 orchestrate status
run "orchestrate check" 0 orchestrate check
run "orchestrate upgrade --all-binds again (nothing to do)" 0 orchestrate upgrade --all-binds
sqlite_urls=$(grep -oE 'sqlite://[^"]+' "$REPO/config/default.toml" | sed 's|^sqlite://||')
missing_files=""
for f in $sqlite_urls; do [ -s "$ROOT/project/$f" ] || missing_files+="$f "; done
if [ -z "$missing_files" ]; then
  pass "SQLite files written: $(tr '\n' ' ' <<<"$sqlite_urls")"
else
  fail "SQLite files missing after upgrade: $missing_files"
fi

# --- Optional: PostgreSQL over TLS from inside the image -------------------------------------
if [ "${IMAGE_CHECK_PG:-1}" = 0 ]; then
  skip "PostgreSQL check (IMAGE_CHECK_PG=0)"
elif ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  skip "PostgreSQL check (nothing listens on 127.0.0.1:5432)"
else
  db=postgres
  if command -v psql >/dev/null 2>&1; then
    if psql -h 127.0.0.1 -p 5432 -U postgres -w -q -d postgres \
      -c "CREATE DATABASE orchestrate_image_check_$$" >/dev/null 2>&1; then
      PGDB=orchestrate_image_check_$$
      db=$PGDB
    fi
  fi
  url="postgres://postgres@127.0.0.1:5432/$db?sslmode=require"
  say "ORCHESTRATE__BINDS__USERS__URL=$url orchestrate status --bind users"
  rc=0
  in_image ORCHESTRATE__BINDS__USERS__URL="$url" /bin/sh -c 'cd /project && exec orchestrate status --bind users' \
    >"$OUT" 2>&1 || rc=$?
  head -n 20 "$OUT" | sed 's/^/    | /' >&2
  if [ "$rc" = 0 ]; then
    pass "orchestrate status on PostgreSQL 127.0.0.1:5432/$db with sslmode=require (exit 0)"
  elif grep -qiE 'does not support SSL|no pg_hba.conf entry|password authentication|authentication failed' "$OUT"; then
    skip "PostgreSQL check: the server refused (no TLS or no trust auth for postgres): $(head -n1 "$OUT")"
  else
    fail "orchestrate status on PostgreSQL with sslmode=require: exit $rc"
  fi
fi

# --- Summary ---------------------------------------------------------------------------------
echo
echo "image-check of $DOCKERFILE runtime stage ($runtime_image + ${packages[*]}), binary $BIN:"
printf '  %s\n' "${results[@]}"
if [ "$failed" = 0 ]; then echo "RESULT: PASS"; else echo "RESULT: FAIL"; fi
exit "$failed"
