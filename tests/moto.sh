#!/usr/bin/env bash
# Starts a local moto server (an AWS emulator; we use its KMS) for the crypto-core
# `aws-kms` tests, and prints shell lines for the caller to `eval`:
#
#   eval "$(bash tests/moto.sh)"
#   trap 'kill "$KMS_TEST_MOTO_PID" 2>/dev/null || true' EXIT
#   cargo test -p crypto-core --features aws-kms --test aws_kms_moto
#
# stdout carries only the `export` lines; progress and errors go to stderr. moto is
# installed from PyPI into target/moto-venv (reused when it already has this version);
# the server listens on 127.0.0.1 on a free port and logs to target/moto-server.log.
# Override the version with MOTO_VERSION.
set -euo pipefail
cd "$(dirname "$0")/.."

moto_version="${MOTO_VERSION:-5.2.5}"
venv=target/moto-venv
log=target/moto-server.log
py="$venv/bin/python"

say() { printf 'moto.sh: %s\n' "$*" >&2; }

mkdir -p target
if ! "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('moto') != '$moto_version')" 2>/dev/null ||
  [ ! -x "$venv/bin/moto_server" ]; then
  say "installing moto[server]==$moto_version into $venv"
  . tests/venv.sh
  make_venv "$venv"
  "$py" -m pip install --quiet --disable-pip-version-check "moto[server]==$moto_version" >&2
fi

# A free port: bind port 0, read the number, release it (moto binds it right after).
port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"

# The server's output goes to the log, not to our stdout: `$(…)` in the caller waits
# until every writer of the pipe has closed it.
nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 </dev/null &
pid=$!

endpoint="http://127.0.0.1:$port"
answered() {
  "$py" - "$endpoint" <<'EOF' 2>/dev/null
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=1)
except urllib.error.HTTPError:
    pass  # any HTTP answer means the server is up
sys.exit(0)
EOF
}

deadline=$((SECONDS + 30))
until answered; do
  if ! kill -0 "$pid" 2>/dev/null; then
    say "moto_server exited during start-up; its log ($log):"
    cat "$log" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    say "moto_server did not answer on $endpoint within 30 s; stopping it. Log ($log):"
    kill "$pid" 2>/dev/null || true
    cat "$log" >&2
    exit 1
  fi
  sleep 0.2
done

say "moto_server $moto_version (pid $pid) answering on $endpoint"
printf 'export KMS_TEST_AWS_ENDPOINT=%s\n' "$endpoint"
printf 'export KMS_TEST_MOTO_PID=%s\n' "$pid"
