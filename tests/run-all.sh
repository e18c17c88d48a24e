#!/usr/bin/env bash
# Every check CI runs, in one command (README: "Run all tests"). Needs a Rust toolchain,
# a C compiler, Python 3, network access to crates.io / PyPI, the `openssl` CLI (the
# independent judge of the certificate authority's tests), and PostgreSQL on
# 127.0.0.1:5432 (database `test`, trust auth; override with KMS_TEST_POSTGRES) for the
# keystore tests. AWS KMS is tested against a local moto server that tests/moto.sh
# installs from PyPI and starts on a loopback port (killed on exit). The C API tests
# need `cc`, `valgrind` and `pkg-config`. Under CI=true a missing PostgreSQL, openssl,
# moto, C compiler, valgrind or pkg-config is a failure; elsewhere the affected tests say
# so loudly and skip.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "format"
cargo fmt --all --check

step "lints (clippy -D warnings, all targets, all features)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "moto (local AWS KMS emulator) for the crypto-core aws-kms tests"
moto_env="$(bash tests/moto.sh)" # a failed start stops the run here (set -e)
eval "$moto_env"
trap 'kill "$KMS_TEST_MOTO_PID" 2>/dev/null || true' EXIT

step "tests (unit, integration, doc, examples; all features)"
cargo test --workspace --all-features

step "benchmarks compile and run once in test mode"
cargo test -q -p cryptocore-benches --benches --all-features

step "sidecar load generator: short smoke run (real sidecar + echo server, debug build; figures in benches/RESULTS.md come from release builds)"
cargo build -q -p kms-sidecar --bin kms-sidecar --all-features
cargo run -q -p cryptocore-benches --all-features --bin kms-load -- --concurrency 1,8 --seconds 0.5 --warmup 0.2 >/dev/null

step "library demo: filecrypt (the README main job is the sidecar; it is exercised by the kms-sidecar tests)"
cargo run -q -p crypto-core --all-features --example filecrypt -- demo

step "independent Python decryptor (docs/reference) against the published vectors"
if ! python3 -c 'import cryptography' 2>/dev/null; then
  venv=target/py-venv
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet cryptography
  py="$venv/bin/python"
else
  py=python3
fi
"$py" docs/reference/decrypt_v1.py crypto-core/tests/vectors/envelope-v1.json | tail -n 1

step "deploy/: manifests parse, and their settings and policy operations exist in the code"
if ! "$py" -c 'import yaml' 2>/dev/null; then
  venv=target/py-venv
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet pyyaml
  py="$venv/bin/python"
fi
"$py" deploy/check.py | tail -n 1

step "all checks passed"
