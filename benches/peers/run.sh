#!/usr/bin/env bash
# Peer harness: the one command. Installs what it needs, measures every peer in the
# same run on one core, and prints the Markdown table (see benches/peers/README.md).
#
#   benches/peers/run.sh                  full run (1 KiB, 1 MiB, 64 MiB), prints the table,
#                                         plot in target/peers/throughput.png
#   benches/peers/run.sh --write-results  same, then updates benches/RESULTS.md (the
#                                         peers:begin/end block) and benches/peers/throughput.png
#   benches/peers/run.sh --quick          smoke run: 1 KiB and 1 MiB, short durations
#
# Environment:
#   PEERS_CORE=N        core to pin to (default 0)
#   PEERS_QUICK=1       same as --quick
#   PEERS_SKIP_INSTALL=1  use the venv and age as they are (no pip, no apt-get)
#   PYTHON=python3.11   interpreter that creates the venv (default python3)
#   PEERS_RUST_BUILD / PEERS_RUST_CMD   the Rust side (see run_rust_side below); default:
#                       build (with libcryptocore.so) and run target/release/peers-rust;
#                       set to "" to skip (PEERS_RUST_CMD="") or not to build (PEERS_RUST_BUILD="")
#   PEERS_C_BUILD / PEERS_C_CMD   the C side, the cryptocore-c-api row (see run_c_side
#                       below); default: gcc -O2 benches/peers/c_api_bench.c into
#                       target/peers/c_api_bench and run it; "" to skip (PEERS_C_CMD="")
#                       or not to build (PEERS_C_BUILD="")
#   CC=gcc              the C compiler of the default C build
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

HERE=benches/peers
VENV=target/peers-venv
OUTDIR=target/peers
CORE=${PEERS_CORE:-0}
PYTHON=${PYTHON:-python3}
QUICK=${PEERS_QUICK:-0}
REPORT_ARGS=()

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        --write-results) REPORT_ARGS+=(--write-results) ;;
        --allow-quick) REPORT_ARGS+=(--allow-quick) ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

say() { printf '\n== %s\n' "$*" >&2; }
loud() {
    {
        printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
        printf '!!! %s\n' "$@"
        printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n'
    } >&2
}

command -v taskset >/dev/null || { echo "run.sh: taskset (util-linux) is needed to pin to one core" >&2; exit 1; }

# --- 1. Python venv with pinned peers -------------------------------------------
REQ="$HERE/requirements.txt"
STAMP="$VENV/.peers-requirements.sha256"
if [[ "${PEERS_SKIP_INSTALL:-0}" != 1 ]]; then
    # shellcheck source=../../tests/venv.sh
    . "$ROOT/tests/venv.sh"
    PYTHON="$PYTHON" make_venv "$VENV"
    pyver=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [[ "$pyver" != 3.11 ]]; then
        echo "run.sh: note: the venv runs Python $pyver; the pins were checked on 3.11" >&2
    fi
    want=$(sha256sum "$REQ" | cut -d' ' -f1)
    if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$want" ]]; then
        say "pip install -r $REQ into $VENV"
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQ"
        echo "$want" > "$STAMP"
    else
        say "$VENV is up to date with $REQ"
    fi
fi
[[ -x "$VENV/bin/python" ]] || { echo "run.sh: no venv at $VENV" >&2; exit 1; }

# --- 2. age (Debian package), best effort ----------------------------------------
have_age() { command -v age >/dev/null && command -v age-keygen >/dev/null; }
if ! have_age && [[ "${PEERS_SKIP_INSTALL:-0}" != 1 ]]; then
    SUDO=()
    if [[ "$(id -u)" != 0 ]]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=(sudo -n); else SUDO=(none); fi
    fi
    if [[ "${SUDO[*]-}" != none ]] && command -v apt-get >/dev/null; then
        say "installing Debian package age"
        export DEBIAN_FRONTEND=noninteractive
        "${SUDO[@]}" apt-get install -y -qq age >/dev/null 2>&1 \
            || { "${SUDO[@]}" apt-get update -qq >/dev/null 2>&1 && "${SUDO[@]}" apt-get install -y -qq age >/dev/null 2>&1; } \
            || true
    fi
fi
AGE_ARGS=()
if ! have_age; then
    loud "age is NOT installed and could not be installed here (needs apt-get as root or" \
         "passwordless sudo: apt-get install age). The table will have NO age row."
    AGE_ARGS=(--no-age)
fi

# --- 3. measurements, all in this run, pinned to one core ------------------------
mkdir -p "$OUTDIR"
rm -f "$OUTDIR"/*.jsonl "$OUTDIR"/*.jsonl.partial   # only this run's figures get merged
export PEERS_RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)-$$"
export PEERS_QUICK="$QUICK"
export PEERS_CORE="$CORE"
QUICK_ARGS=()
[[ "$QUICK" == 1 ]] && QUICK_ARGS=(--quick)

# The Rust side (this project's library, `kmsctl encrypt`, raw aws-lc-rs).
# Contract for the binary that will measure it:
#   * built here, unpinned, by PEERS_RUST_BUILD (e.g. a cargo build --release of it);
#   * run here by PEERS_RUST_CMD under `taskset -c $PEERS_CORE`, with PEERS_OUT,
#     PEERS_QUICK (1 = 1 KiB and 1 MiB only, short durations) and PEERS_RUN_ID in
#     its environment;
#   * writes JSON lines to $PEERS_OUT (target/peers/results-rust.jsonl): one
#     {"kind":"meta","source":...,"run_id":$PEERS_RUN_ID,"date":...,"quick":...,
#     "affinity":[...]} line, then one line per cell
#     {"impl":"cryptocore-envelope"|"cryptocore-envelope-into"|"kmsctl"|"aws-lc-rs-raw",
#      "op":"seal"|"open","size":bytes,"gbps":10^9 B/s,"runs":n,"note":"...",
#      "version":"..."} and, for kmsctl, size-0 lines with "seconds" (process start).
# That binary is benches/src/bin/peers-rust.rs; it finds kms-sidecar and kmsctl next to
# itself (PEERS_KMS_SIDECAR / PEERS_KMSCTL override). The defaults below build the three,
# and libcryptocore.so for the C side (release profile, not pinned; one cargo invocation:
# the ffi crate built on its own would get other features and rebuild half the tree), and
# run it; set either variable to override it, or to "" to skip that step.
RUST_TARGET_DIR=${CARGO_TARGET_DIR:-target}
DEFAULT_RUST_BUILD="cargo build --release -p cryptocore-benches --bin peers-rust -p kms-sidecar --bin kms-sidecar --bin kmsctl -p cryptocore-ffi --lib"
DEFAULT_RUST_CMD="$RUST_TARGET_DIR/release/peers-rust"
run_rust_side() {
    local build=${PEERS_RUST_BUILD-$DEFAULT_RUST_BUILD} cmd=${PEERS_RUST_CMD-$DEFAULT_RUST_CMD}
    if [[ -z "$cmd" ]]; then
        loud "Rust side skipped (PEERS_RUST_CMD is empty): no cryptocore-envelope," \
             "cryptocore-envelope-into, kmsctl or aws-lc-rs-raw rows; ratios are to cryptography-aesgcm."
        return 0
    fi
    if [[ -n "$build" ]]; then
        say "Rust side: build ($build)"
        # `|| return`: errexit does not apply inside a function called from `run_rust_side || …`.
        RUST_BUILD=failed
        bash -c "$build" >&2 || { echo "run.sh: the Rust side's build failed" >&2; return 1; }
        RUST_BUILD=ok
    fi
    say "Rust side: measure on core $CORE ($cmd)"
    PEERS_OUT="$ROOT/$OUTDIR/results-rust.jsonl" taskset -c "$CORE" bash -c "$cmd" >&2
}

# The C side: the `cryptocore-c-api` row, the C ABI as a C caller gets it.
# benches/peers/c_api_bench.c measures it with peers-rust's method and writes the same
# JSON lines (impl "cryptocore-c-api") to $PEERS_OUT (target/peers/results-c.jsonl).
#   * built here, unpinned, by PEERS_C_BUILD; the default (build_c_side) runs
#     $CC -std=c11 -O2 against ffi/include/cryptocore.h and the libcryptocore.so of the
#     Rust side's build ($RUST_TARGET_DIR/release, found at run time through the rpath)
#     into target/peers/c_api_bench;
#   * run here by PEERS_C_CMD under `taskset -c $PEERS_CORE`, with PEERS_OUT, PEERS_QUICK
#     and PEERS_RUN_ID in its environment, like the Rust side.
# A missing compiler or library is a loud failure of the run, as a failed Rust side is.
CC=${CC:-gcc}
case "$RUST_TARGET_DIR" in
    /*) C_LIB_DIR="$RUST_TARGET_DIR/release" ;;
    *) C_LIB_DIR="$ROOT/$RUST_TARGET_DIR/release" ;;
esac
DEFAULT_C_CMD="$OUTDIR/c_api_bench"
RUST_BUILD=not-run   # set by run_rust_side: ok | failed
build_c_side() {
    if ! command -v "$CC" >/dev/null; then
        loud "The C compiler '$CC' is NOT installed: no cryptocore-c-api row." \
             "Install gcc (apt-get install gcc), set CC, or skip the C side with PEERS_C_CMD=\"\"."
        return 1
    fi
    if [[ ! -f "$C_LIB_DIR/libcryptocore.so" ]]; then
        loud "$C_LIB_DIR/libcryptocore.so NOT found: no cryptocore-c-api row." \
             "The Rust side's default build makes it (cargo build --release ... -p cryptocore-ffi --lib)."
        return 1
    fi
    case "$RUST_BUILD" in
        failed)
            loud "The Rust side's build failed: not measuring a possibly stale $C_LIB_DIR/libcryptocore.so."
            return 1 ;;
        not-run)
            echo "run.sh: note: libcryptocore.so not rebuilt in this run (PEERS_RUST_BUILD or PEERS_RUST_CMD" \
                 "empty); using the one from $(date -r "$C_LIB_DIR/libcryptocore.so" '+%F %T')" >&2 ;;
    esac
    local awslc
    awslc=$(awk '$0 == "name = \"aws-lc-rs\"" { getline; gsub(/^version = "|"$/, ""); print; exit }' Cargo.lock)
    local cmd=("$CC" -std=c11 -O2 -Wall -Wextra -Werror -I ffi/include "-DPEERS_AWS_LC_RS_VERSION=\"${awslc:-?}\""
               "$HERE/c_api_bench.c" -L "$C_LIB_DIR" "-Wl,-rpath,$C_LIB_DIR" -lcryptocore -lm -o "$OUTDIR/c_api_bench")
    echo "${cmd[*]}" >&2
    "${cmd[@]}" >&2
}
run_c_side() {
    local cmd=${PEERS_C_CMD-$DEFAULT_C_CMD}
    if [[ -z "$cmd" ]]; then
        loud "C side skipped (PEERS_C_CMD is empty): no cryptocore-c-api row."
        return 0
    fi
    if [[ -z "${PEERS_C_BUILD+set}" ]]; then
        say "C side: build"
        build_c_side || { echo "run.sh: the C side's build failed" >&2; return 1; }
    elif [[ -n "$PEERS_C_BUILD" ]]; then
        say "C side: build ($PEERS_C_BUILD)"
        bash -c "$PEERS_C_BUILD" >&2 || { echo "run.sh: the C side's build failed" >&2; return 1; }
    fi
    say "C side: measure on core $CORE ($cmd)"
    PEERS_OUT="$ROOT/$OUTDIR/results-c.jsonl" taskset -c "$CORE" bash -c "$cmd" >&2
}

status=0
run_rust_side || { echo "run.sh: the Rust side failed" >&2; status=1; }
run_c_side || { echo "run.sh: the C side failed" >&2; status=1; }

say "Python peers and age on core $CORE${QUICK_ARGS:+ (quick)}"
taskset -c "$CORE" "$VENV/bin/python" "$HERE/peers.py" "${QUICK_ARGS[@]}" "${AGE_ARGS[@]}" \
    --out "$OUTDIR/results-python.jsonl" || status=1

# --- 4. merge and report -----------------------------------------------------------
say "report"
"$VENV/bin/python" "$HERE/report.py" "${REPORT_ARGS[@]}" || status=1
exit $status
