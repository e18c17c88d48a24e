#!/usr/bin/env bash
# Every check CI runs, in one command (README: "Run all tests"). Needs a Rust toolchain,
# a C compiler, Python 3, network access to crates.io / PyPI, the `openssl` CLI (the
# independent judge of the certificate authority's tests), and PostgreSQL on
# 127.0.0.1:5432 (database `test`, trust auth; override with KMS_TEST_POSTGRES) for the
# keystore tests. AWS KMS is tested against a local moto server that tests/moto.sh
# installs from PyPI and starts on a loopback port (killed on exit). The C API tests
# need `cc`, `valgrind` and `pkg-config` (and `c++` for the C++ header check; `go`, which
# the script installs from Debian when it can, for the optional cgo example). Under CI=true a missing PostgreSQL, openssl,
# moto, C compiler, valgrind or pkg-config is a failure; elsewhere the affected tests say
# so loudly and skip.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
. tests/venv.sh # make_venv: a Python venv with a working pip, or a diagnosis

step "format"
cargo fmt --all --check

step "lints (clippy -D warnings, all targets, all features)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "moto (local AWS KMS emulator) for the crypto-core aws-kms tests"
moto_env="$(bash tests/moto.sh)" # a failed start stops the run here (set -e)
eval "$moto_env"
trap 'kill "$KMS_TEST_MOTO_PID" 2>/dev/null || true' EXIT

step "Go toolchain for the C API's cgo example (optional: Debian golang-go, best effort)"
if command -v go >/dev/null; then
  go version
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
  && timeout 300 apt-get install -y -q golang-go >/dev/null 2>&1; then
  go version
else
  echo "*** no Go toolchain and it could not be installed: the Go example test will say SKIPPED ***"
fi

step "tests (unit, integration, doc, examples; all features)"
cargo test --workspace --all-features

# The steps below select the whole workspace with all features, like the test build, so
# cargo reuses its artifacts instead of rebuilding dependencies with other feature sets.
target_dir="${CARGO_TARGET_DIR:-target}"

step "benchmarks compile and run once in test mode"
cargo test -q --workspace --benches --all-features

step "sidecar load generator: short smoke run (real sidecar + echo server, debug build; figures in benches/RESULTS.md come from release builds)"
cargo build -q --workspace --all-features --lib --bins --examples
"$target_dir/debug/kms-load" --concurrency 1,8 --seconds 0.5 --warmup 0.2 >/dev/null
"$target_dir/debug/kms-load" rate --rate 200 --seconds 0.5 --warmup 0.2 >/dev/null

step "peer harness: the C ABI bench (benches/peers/c_api_bench.c) builds against libcryptocore.so and runs one quick cell"
gcc -std=c11 -O2 -Wall -Wextra -Werror -I ffi/include benches/peers/c_api_bench.c \
  -L "$target_dir/debug" "-Wl,-rpath,$(cd "$target_dir/debug" && pwd)" -lcryptocore -lm -o "$target_dir/c_api_bench"
"$target_dir/c_api_bench" --quick --sizes 1024 --out "$target_dir/c_api_bench.jsonl" >/dev/null

step "library demo: filecrypt (the README main job is the sidecar; it is exercised by the kms-sidecar tests)"
"$target_dir/debug/examples/filecrypt" demo

step "independent Python decryptor (docs/reference) against the published vectors"
if ! python3 -c 'import cryptography' 2>/dev/null; then
  venv=target/py-venv
  make_venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check cryptography
  py="$venv/bin/python"
else
  py=python3
fi
"$py" docs/reference/decrypt_v1.py crypto-core/tests/vectors/envelope-v1.json | tail -n 1

step "deploy/: manifests parse, and their settings and policy operations exist in the code"
if ! "$py" -c 'import yaml' 2>/dev/null; then
  venv=target/py-venv
  make_venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check pyyaml
  py="$venv/bin/python"
fi
"$py" deploy/check.py | tail -n 1

step "fuzz smoke: every fuzz/ target for 20 s from its seeds (cargo-fuzz with RUSTC_BOOTSTRAP=1; says NOT RUN when cargo-fuzz is missing)"
bash fuzz/smoke.sh

step "all checks passed"
