#!/usr/bin/env bash
# The second venv of the test suite: the real Python language worker of Azure Functions
# for Python 3.13 (azure-functions-runtime, with azure-functions 2.x from the app's own
# requirements.txt), and Python stubs of the host's gRPC protocol. tests/worker_host/
# starts it under a stand-in for the Functions host.
#
#   bash scripts/worker-venv.sh        creates or refreshes <repo>/.venv-worker (WORKER_VENV)
#
# Idempotent: does nothing when the venv was made from the same inputs (this script,
# requirements.txt, tests/worker_host/requirements.txt, protogen.py and the interpreter).
# The interpreter is WORKER_PYTHON, else a Python 3.13 found on PATH, under pyenv or in
# /usr/bin, else Debian's python3.13 from apt where the release has it. Without one it
# fails: the worker harness is part of the suite and never skipped.
#
# The protocol: the azure-functions-runtime-v1 wheel (pinned, checked by SHA-256) ships
# the compiled protocol under tests/protos/. It is downloaded, never installed (it would
# install a top-level "tests" package); protogen.py compiles its descriptors again with
# grpcio-tools into <venv>/rpc/azfrpc, which both venvs import.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${WORKER_VENV:-$ROOT/.venv-worker}"
PINS="$ROOT/tests/worker_host/requirements.txt"
PROTOGEN="$ROOT/tests/worker_host/protogen.py"
PROTO_WHEEL="azure-functions-runtime-v1==1.2.0"
PROTO_WHEEL_FILE="azure_functions_runtime_v1-1.2.0-py3-none-any.whl"
PROTO_WHEEL_SHA256="6ae0abb681e28c61a404b52e1c4481f203bb113e5027fbe908989ea9585a02a0"
WANT="3.13"

die() {
    echo "worker-venv: $*" >&2
    exit 2
}

is_wanted() { # is "$1" a working Python $WANT?
    [[ -x "$1" ]] && "$1" -c "import sys, venv; sys.exit('%d.%d' % sys.version_info[:2] != '$WANT')" 2>/dev/null
}

find_python() {
    local candidate
    if [[ -n "${WORKER_PYTHON:-}" ]]; then
        is_wanted "$WORKER_PYTHON" || die "WORKER_PYTHON=$WORKER_PYTHON is not a Python $WANT with venv."
        echo "$WORKER_PYTHON"
        return
    fi
    # pyenv's shims answer for versions that are not selected too, and then fail: ask
    # each candidate itself.
    local pyenv_root="${PYENV_ROOT:-$(pyenv root 2>/dev/null || echo "${HOME:-/root}/.pyenv")}"
    for candidate in "$(command -v "python$WANT" || true)" \
        "$pyenv_root"/versions/"$WANT".*/bin/"python$WANT" \
        /usr/bin/"python$WANT" /usr/local/bin/"python$WANT"; do
        if is_wanted "$candidate"; then
            echo "$candidate"
            return
        fi
    done
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq >/dev/null
        if apt-cache show "python$WANT-venv" >/dev/null 2>&1; then
            echo "worker-venv: installing python$WANT python$WANT-venv (apt)" >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$WANT" \
                "python$WANT-venv" >/dev/null
            is_wanted "/usr/bin/python$WANT" && { echo "/usr/bin/python$WANT"; return; }
        fi
    fi
    die "no Python $WANT found (PATH, pyenv, /usr/bin; apt has none for this release). The" \
        "worker harness runs the Python 3.13 worker of Azure Functions: install Python $WANT" \
        "(pyenv install $WANT, or apt-get install python$WANT-venv) or set WORKER_PYTHON."
}

PYTHON="$(find_python)"
inputs="$(cat "$0" "$ROOT/requirements.txt" "$PINS" "$PROTOGEN" | sha256sum | cut -d' ' -f1)"
inputs="$inputs $("$PYTHON" -c 'import sys; print(sys.version.split()[0])') $PYTHON"
marker="$VENV/.worker-venv-inputs"
[[ -f "$marker" && "$(cat "$marker")" == "$inputs" && -x "$VENV/bin/python" ]] && exit 0

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
[[ -f "$marker" && "$(cat "$marker")" == "$inputs" && -x "$VENV/bin/python" ]] && exit 0

echo "worker-venv: creating $VENV with $PYTHON (a minute on first run)" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
echo '*' >"$VENV/.gitignore" # never committed, as virtualenv does
# pip, its output on stderr without the "Location ... is ignored" lines of a pip.conf
# whose extra local indexes are absent (a machine-wide setting, not ours).
pip() {
    "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 |
        { grep -v "^WARNING: Location '.*' is ignored" || true; } >&2
}
pip install --upgrade pip
pip install -r "$ROOT/requirements.txt" -r "$PINS"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pip download --no-deps --only-binary=:all: -d "$work" "$PROTO_WHEEL"
echo "$PROTO_WHEEL_SHA256  $work/$PROTO_WHEEL_FILE" | sha256sum -c --quiet - ||
    die "$PROTO_WHEEL_FILE does not have the pinned SHA-256; refusing to use it."
"$VENV/bin/python" - "$work/$PROTO_WHEEL_FILE" "$work/src" <<'PY'
import sys, zipfile
from pathlib import Path

wheel, out = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if name.startswith("tests/protos/") and name.endswith("_pb2.py"):
            target = out / name.removeprefix("tests/protos/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
PY
"$VENV/bin/python" "$PROTOGEN" "$work/src" "$VENV/rpc" >&2
echo "$inputs" >"$marker"
echo "worker-venv: ready ($("$VENV/bin/python" -m pip list 2>/dev/null | grep -E '^azure-functions(-runtime)? ' | tr -s ' ' | paste -sd ' '))" >&2
