# Sourced, not run: `. tests/venv.sh; make_venv DIR` creates a Python virtual
# environment at DIR that has a working pip, or fails with a diagnosis on stderr.
#
# Why not just `python3 -m venv DIR`: that call runs `ensurepip`, which is missing from
# some interpreters (Debian's python3 without python3-venv) and has failed on a CI machine
# of this project with no message beyond its exit code. A half-made DIR (an interpreter
# but no pip) then makes every later run fail too. So this helper
#   1. reuses DIR only when its pip runs; otherwise it deletes DIR and starts over;
#   2. tries each interpreter in $PYTHON (if set), python3, python3.11, /usr/bin/python3,
#      first with `-m venv` (ensurepip), then with `-m venv --without-pip` plus the
#      interpreter's own pip installing pip into the venv (`pip --python`, pip >= 22.3);
#   3. prints what it tried, the interpreter versions and the free disk space when all fail.
# Output of the tries goes to stderr; nothing goes to stdout (callers capture stdout).

_venv_say() { printf 'venv.sh: %s\n' "$*" >&2; }

_venv_pip_ok() { [ -x "$1/bin/python" ] && "$1/bin/python" -m pip --version >/dev/null 2>&1; }

make_venv() {
  local dir="$1" py tried=()
  if _venv_pip_ok "$dir"; then
    return 0
  fi
  [ -e "$dir" ] && { _venv_say "removing $dir: it has no working pip (a half-made venv)"; rm -rf "$dir"; }
  mkdir -p "$(dirname "$dir")"
  for py in ${PYTHON:-} python3 python3.11 /usr/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    tried+=("$py ($("$py" --version 2>&1))")
    if "$py" -m venv "$dir" >&2 && _venv_pip_ok "$dir"; then
      return 0
    fi
    _venv_say "'$py -m venv' did not give a venv with pip; trying --without-pip and the interpreter's own pip"
    rm -rf "$dir"
    if "$py" -m venv --without-pip "$dir" >&2 &&
      "$py" -m pip --python "$dir/bin/python" install --quiet --disable-pip-version-check pip >&2 &&
      _venv_pip_ok "$dir"; then
      return 0
    fi
    rm -rf "$dir"
  done
  _venv_say "could not create a Python venv with pip at $dir"
  _venv_say "interpreters tried: ${tried[*]:-none found}"
  _venv_say "free space: $(df -h "$(dirname "$dir")" 2>/dev/null | tail -n 1)"
  _venv_say "TMPDIR=${TMPDIR:-unset}; free space there: $(df -h "${TMPDIR:-/tmp}" 2>/dev/null | tail -n 1)"
  return 1
}
