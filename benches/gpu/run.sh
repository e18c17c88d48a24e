#!/usr/bin/env bash
# Runs the GPU benchmark (and, optionally, the GPU tests) on a machine with an NVIDIA GPU
# and no Rust toolchain, from binaries built elsewhere and carried in a git-ignored folder.
#
# On the build machine (x86_64 Linux, glibc no newer than the GPU machine's):
#
#   cargo build --release -p crypto-core --features gpu --example gpu_bench
#   cargo test  --release -p crypto-core --features gpu --lib --no-run   # prints the test binary
#   mkdir -p target/gpu-bench
#   cp "$CARGO_TARGET_DIR"/release/examples/gpu_bench target/gpu-bench/
#   cp "$CARGO_TARGET_DIR"/release/deps/crypto_core-<hash> target/gpu-bench/crypto_core_tests
#
# On the GPU machine (target/ is git-ignored: carry target/gpu-bench along):
#
#   benches/gpu/run.sh            # benchmark, default options
#   benches/gpu/run.sh tests      # the bulk::gpu tests, failing if no device is found
#   benches/gpu/run.sh bench --max-mib 1024 --segment-size 1048576
#
# Output goes to stdout and, when $OUT is set (the device tool's result folder), to
# $OUT/gpu_bench.txt / $OUT/gpu_tests.txt. Nothing is built here.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin_dir="${GPU_BENCH_DIR:-$root/target/gpu-bench}"
mode="${1:-bench}"
if [[ "$mode" == bench || "$mode" == tests ]]; then
  shift || true
fi

if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
fi

out_file() {
  if [[ -n "${OUT:-}" ]]; then echo "$OUT/$1"; else echo /dev/null; fi
}

{
  echo "== machine"
  date -u +%Y-%m-%dT%H:%M:%SZ
  uname -srm
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,pcie.link.gen.max,pcie.link.width.max \
      --format=csv
  else
    echo "nvidia-smi not found"
  fi
  nproc
} | tee "$(out_file machine.txt)"

case "$mode" in
  bench)
    bin="$bin_dir/gpu_bench"
    [[ -x "$bin" ]] || { echo "no benchmark binary at $bin (see the top of this script)" >&2; exit 2; }
    "$bin" "$@" 2>&1 | tee "$(out_file gpu_bench.txt)"
    ;;
  tests)
    bin="$bin_dir/crypto_core_tests"
    [[ -x "$bin" ]] || { echo "no test binary at $bin (see the top of this script)" >&2; exit 2; }
    # A missing device must fail here, not skip.
    CI=true CRYPTOCORE_REQUIRE_GPU=1 "$bin" bulk:: --test-threads 1 "$@" 2>&1 | tee "$(out_file gpu_tests.txt)"
    ;;
  *)
    echo "usage: $0 [bench [options] | tests [test filter/options]]" >&2
    exit 2
    ;;
esac
