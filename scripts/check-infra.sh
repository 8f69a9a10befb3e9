#!/usr/bin/env bash
# Check the Bicep under infra/: parse every .bicep file with pycep-parser, then scan the
# folder with checkov. Exits non-zero on any parse error or any checkov finding.
#
#   bash scripts/check-infra.sh [DIR]      DIR defaults to <repo>/infra
#
# Why both: checkov parses Bicep with pycep-parser too, but a file it cannot parse is only
# logged and the scan still exits 0, so a broken file would pass unnoticed. The parse step
# makes it an error, and the checkov step also fails on a non-zero "parsing_errors".
#
# No Bicep compiler runs here (no Azure CLI, no network beyond package registries):
# pycep-parser's grammar is the syntax check. Findings are fixed in the Bicep or skipped
# in the resource with "// checkov:skip=CKV_...:<reason>".
#
# pycep-parser and checkov are heavy, so they live in their own venv, <repo>/.venv-infra
# (override with INFRA_VENV), created on first use from python3 and kept out of the app's
# venv. The versions are pinned here: checkov pins the pycep-parser it parses with, and
# the parse step uses that same version.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INFRA_DIR="${1:-$ROOT/infra}"
VENV="${INFRA_VENV:-$ROOT/.venv-infra}"
PINS="checkov==3.3.30 pycep-parser==0.5.1"
PYTHON="${PYTHON:-python3}"

die() {
    echo "check-infra: $*" >&2
    exit 2
}

# Create the venv and install the pinned tools unless the venv already has exactly them.
# A lock keeps two concurrent runs (CI steps, a test) from installing over each other.
ensure_venv() {
    local marker="$VENV/.check-infra-pins"
    if [[ -x "$VENV/bin/checkov" && -f "$marker" && "$(cat "$marker")" == "$PINS" ]]; then
        return
    fi
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3.9 or newer (apt-get install python3)."
    mkdir -p "$(dirname "$VENV")"
    exec 9>"$VENV.lock"
    flock 9
    if [[ -x "$VENV/bin/checkov" && -f "$marker" && "$(cat "$marker")" == "$PINS" ]]; then
        return
    fi
    echo "check-infra: installing $PINS into $VENV (first run; takes a minute or two)" >&2
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 ships without venv/ensurepip; python3-venv adds it.
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            echo "check-infra: '$PYTHON -m venv' failed; installing python3-venv with apt-get" >&2
            rm -rf "$VENV"
            apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$PYTHON" -m venv "$VENV"
        else
            die "'$PYTHON -m venv $VENV' failed. On Debian/Ubuntu: sudo apt-get install python3-venv"
        fi
    fi
    # Never committed: the venv ignores itself (as virtualenv does).
    echo '*' >"$VENV/.gitignore"
    "$VENV/bin/python" -m pip install -qq --disable-pip-version-check --upgrade pip >&2
    # shellcheck disable=SC2086  # PINS is a list of requirement specifiers
    "$VENV/bin/python" -m pip install -qq --disable-pip-version-check $PINS >&2
    echo "$PINS" >"$marker"
}

[[ -d "$INFRA_DIR" ]] || die "no folder $INFRA_DIR: run from the repository root, or pass the Bicep folder."
ensure_venv

echo "== pycep-parser: parsing every .bicep under $INFRA_DIR"
"$VENV/bin/python" - "$INFRA_DIR" <<'PY'
import sys
from pathlib import Path

from pycep import BicepParser

root = Path(sys.argv[1])
files = sorted(root.rglob("*.bicep"))
if not files:
    print(f"check-infra: no .bicep file under {root}", file=sys.stderr)
    sys.exit(1)
parser = BicepParser()
failed = 0
for path in files:
    try:
        tree = parser.parse(file_path=path)
    except Exception as exc:  # lark's errors, and pycep's ValueError for bad ''' strings
        failed += 1
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"PARSE ERROR {path}: {type(exc).__name__}: {first}")
        continue
    counts = ", ".join(
        f"{len(tree.get(key, {}))} {key}" for key in ("parameters", "resources", "modules", "outputs")
    )
    print(f"parsed {path}: {counts}")
print(f"pycep-parser: {len(files) - failed} of {len(files)} files parsed")
sys.exit(1 if failed else 0)
PY

echo "== checkov --framework bicep --skip-download -d $INFRA_DIR"
report_dir="$(mktemp -d)"
trap 'rm -rf "$report_dir"' EXIT
set +e
"$VENV/bin/checkov" --framework bicep --skip-download -d "$INFRA_DIR" --compact \
    -o json --output-file-path "$report_dir/out" >"$report_dir/checkov.log" 2>&1
checkov_rc=$?
set -e
"$VENV/bin/python" - "$report_dir/out/results_json.json" "$checkov_rc" "$report_dir/checkov.log" <<'PY'
import json
import sys
from pathlib import Path

report_path, checkov_rc, log_path = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
if not report_path.exists():
    print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
    print(f"check-infra: checkov wrote no report (exit {checkov_rc})", file=sys.stderr)
    sys.exit(1)
report = json.loads(report_path.read_text())
reports = report if isinstance(report, list) else [report]
totals = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0}
for one in reports:
    summary = one.get("summary", {})
    for key in totals:
        totals[key] += int(summary.get(key, 0))
    results = one.get("results", {})
    for check in results.get("failed_checks", []):
        lines = check.get("file_line_range") or ["?", "?"]
        print(
            f"FAILED {check['check_id']} ({check.get('check_name', '')}) on {check['resource']} "
            f"at {check.get('file_path', '?')}:{lines[0]}-{lines[1]}"
        )
    for check in results.get("skipped_checks", []):
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        print(f"skipped {check['check_id']} on {check['resource']}: {reason}")
    for path in results.get("parsing_errors", []):
        print(f"PARSE ERROR (checkov) {path}")
print(
    f"checkov: passed {totals['passed']}, failed {totals['failed']}, "
    f"skipped {totals['skipped']}, parsing errors {totals['parsing_errors']}"
)
bad = totals["failed"] or totals["parsing_errors"] or checkov_rc
if totals["passed"] + totals["failed"] + totals["skipped"] == 0:
    print("check-infra: checkov ran no check", file=sys.stderr)
    bad = True
sys.exit(1 if bad else 0)
PY
echo "check-infra: OK"
