"""Large data streams through with flat memory (the issue's bound: 150 MB peak RSS)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import Keys, make_keys, make_stamp, write_random

REPO = Path(__file__).resolve().parents[1]
SIZE = int(os.environ.get("INFRABACKUP_LARGE_TEST_MIB", "400")) * 1024 * 1024
PEAK_RSS_LIMIT = 150 * 1024 * 1024

# Runs the command as a child and prints the child's peak RSS (bytes) on the last line.
_MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
    "sys.exit(code)\n"
)


def _measured(args: list[str], env: dict[str, str]) -> tuple[dict[str, object], int]:
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, sys.executable, "-m", "shared", *args, "--json"],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    *out, rss = proc.stdout.strip().splitlines()
    return json.loads("\n".join(out)), int(rss)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.mark.slow
def test_a_large_file_backs_up_and_restores_with_flat_memory(tmp_path: Path, keys: Keys) -> None:
    stamp = make_stamp(tmp_path, keys)
    big = write_random(stamp.source_dir("ACS") / "large.vhd", SIZE, seed=7)
    backup, backup_rss = _measured(["backup"], stamp.env)
    _, restore_rss = _measured(
        ["restore", str(backup["backupId"]), "--to", str(tmp_path / "r")], stamp.env)
    assert _sha256(tmp_path / "r/ACS/large.vhd") == _sha256(big)
    assert backup_rss < PEAK_RSS_LIMIT, f"backup peak RSS {backup_rss / 2**20:.0f} MiB"
    assert restore_rss < PEAK_RSS_LIMIT, f"restore peak RSS {restore_rss / 2**20:.0f} MiB"
