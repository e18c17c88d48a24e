#!/usr/bin/env bash
# Fuzz smoke: every target in fuzz_targets/ for a short while from its committed seeds.
#
#   fuzz/smoke.sh                      # 20 s per target
#   FUZZ_SMOKE_SECONDS=60 fuzz/smoke.sh
#
# Builds all targets once (`cargo fuzz build`, stable toolchain with RUSTC_BOOTSTRAP=1,
# AddressSanitizer), then runs each from a temporary copy of seeds/<target> (the
# repository is not modified) with leak detection on, FUZZ_SMOKE_JOBS targets at a time
# (default: the number of CPUs). Prints one line per target: executions, seconds, result.
# Exits non-zero if any target crashes, leaks, times out (an input slower than
# FUZZ_SMOKE_TIMEOUT seconds, default 30) or runs out of memory, naming the target and
# the reproducing input, which is kept in fuzz/artifacts/<target>/ (ignored by git).
#
# FUZZ_SMOKE_TARGETS="a b" runs only those targets; FUZZ_SMOKE_ARGS adds libFuzzer flags.
#
# When `cargo fuzz` is missing or unusable, it prints a banner saying the smoke did NOT
# run and why, and exits 0 — except under CI=true with FUZZ_SMOKE_REQUIRED=1, where that
# is a failure (exit 2).
set -uo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SMOKE_SECONDS:-20}"
timeout_s="${FUZZ_SMOKE_TIMEOUT:-30}"
jobs="${FUZZ_SMOKE_JOBS:-$(nproc 2>/dev/null || echo 1)}"
export RUSTC_BOOTSTRAP=1

not_run() {
  local bar='********************************************************************************'
  printf '\n%s\n*** FUZZ SMOKE NOT RUN: %s\n%s\n\n' "$bar" "$1" "$bar" >&2
  if [ "${CI:-}" = true ] && [ "${FUZZ_SMOKE_REQUIRED:-}" = 1 ]; then
    echo "CI=true and FUZZ_SMOKE_REQUIRED=1: failing" >&2
    exit 2
  fi
  exit 0
}

case "$seconds" in '' | *[!0-9]* | 0) not_run "FUZZ_SMOKE_SECONDS=$seconds is not a positive number of seconds" ;; esac
case "$jobs" in '' | *[!0-9]* | 0) jobs=1 ;; esac

# Usable: the cargo-fuzz subcommand runs, and rustc accepts the sanitizer flags it passes.
if ! command -v cargo >/dev/null; then
  not_run "no cargo on PATH"
fi
if ! version="$(cargo fuzz --version 2>&1)"; then
  not_run "cargo-fuzz is not installed (cargo install cargo-fuzz --locked): $(echo "$version" | head -1)"
fi
probe="$(mktemp -d)"
trap 'rm -rf "$probe"' EXIT
if ! err="$(echo 'pub fn f() {}' | rustc -Zsanitizer=address --crate-type=lib --emit=metadata -o "$probe/p" - 2>&1)"; then
  not_run "rustc refuses -Zsanitizer=address even with RUSTC_BOOTSTRAP=1: $(echo "$err" | head -1)"
fi
host="$(rustc -vV | sed -n 's/^host: //p')"

targets=()
for f in fuzz_targets/*.rs; do
  t="$(basename "$f" .rs)"
  [ "$t" = common ] && continue
  if [ -n "${FUZZ_SMOKE_TARGETS:-}" ] && [[ " $FUZZ_SMOKE_TARGETS " != *" $t "* ]]; then continue; fi
  targets+=("$t")
done
[ "${#targets[@]}" -gt 0 ] || not_run "no fuzz target matches FUZZ_SMOKE_TARGETS=${FUZZ_SMOKE_TARGETS:-}"

echo "== $version, $(rustc --version), ${#targets[@]} targets, ${seconds}s each, $jobs at a time"
start=$SECONDS
if ! cargo fuzz build >"$probe/build.log" 2>&1; then
  tail -40 "$probe/build.log" >&2
  echo "FAIL: cargo fuzz build" >&2
  exit 1
fi
build_s=$((SECONDS - start))
echo "== build: ${build_s}s"

bin_dir="target/$host/release"
# One target: prints its line to $probe/<target>.line; exit status 0 when it passed.
run_one() {
  local t="$1" work="$probe/$1" log="$probe/$1.log" t0=$SECONDS rc
  mkdir -p "$work/corpus" "artifacts/$t"
  if [ -d "seeds/$t" ]; then cp -R "seeds/$t/." "$work/corpus/"; fi
  # Leaks are reported both per input (-detect_leaks) and at exit (ASan's LeakSanitizer).
  ASAN_OPTIONS="detect_leaks=1:${ASAN_OPTIONS:-}" "$bin_dir/$t" "$work/corpus" \
    -max_total_time="$seconds" -timeout="$timeout_s" -detect_leaks=1 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" ${FUZZ_SMOKE_ARGS:-} >"$log" 2>&1
  rc=$?
  local secs=$((SECONDS - t0))
  local execs
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  [ -n "$execs" ] || execs="$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')"
  if [ "$rc" -eq 0 ]; then
    rmdir "artifacts/$t" 2>/dev/null
    printf '%-18s %12s execs %5ss  ok\n' "$t" "${execs:-?}" "$secs" >"$probe/$t.line"
    return 0
  fi
  local what artifact
  what="$(grep -m1 -oE 'ERROR: (libFuzzer|LeakSanitizer|AddressSanitizer): [a-zA-Z -]+|panicked at [^,]*' "$log" | sed 's/ *$//')"
  artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)"
  printf '%-18s %12s execs %5ss  FAIL (exit %s): %s; input: %s\n' "$t" "${execs:-?}" "$secs" "$rc" \
    "${what:-see log}" "${artifact:+fuzz/$artifact}" >"$probe/$t.line"
  cp "$log" "artifacts/$t/smoke.log"
  return 1
}

start=$SECONDS
declare -A pids=()
failed=()
# Waits for some target to finish; prints the line of each finished one.
reap() {
  local pid t
  wait -n 2>/dev/null || true
  for pid in "${!pids[@]}"; do
    t="${pids[$pid]}"
    if ! kill -0 "$pid" 2>/dev/null; then
      unset "pids[$pid]"
      [ "$(cat "$probe/$t.rc" 2>/dev/null)" = 0 ] || failed+=("$t")
      cat "$probe/$t.line" 2>/dev/null || echo "$t: its runner was killed"
    fi
  done
}
for t in "${targets[@]}"; do
  while [ "${#pids[@]}" -ge "$jobs" ]; do reap; done
  (
    run_one "$t"
    echo $? >"$probe/$t.rc"
  ) &
  pids[$!]="$t"
done
while [ "${#pids[@]}" -gt 0 ]; do reap; done
run_s=$((SECONDS - start))
rmdir artifacts 2>/dev/null

echo "== run: ${run_s}s (build ${build_s}s)"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "FUZZ SMOKE FAILED: ${failed[*]} (logs in fuzz/artifacts/<target>/smoke.log)" >&2
  exit 1
fi
echo "== fuzz smoke passed: ${#targets[@]} targets"
