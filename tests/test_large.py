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
        [sys.executable, "-c", _MEASURE, sys.executable, "-m", "infrabackup", *args, "--json"],
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


#: Files of the many-files restore test, and how much more memory its restore may take
#: than one of a sixth as many: none, but for allocator noise. (Python's tar reader kept
#: every member it read: some 0.7 KB a file, +18 MB between the two sizes.)
MANY_FILES = int(os.environ.get("INFRABACKUP_MANY_FILES", "30000"))
FLAT_MARGIN = 8 * 1024 * 1024


def _many_small_files(root: Path, count: int) -> None:
    for i in range(count):
        folder = root / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"file-{i:07d}.cfg").write_bytes(b"x" * (i % 200 + 1))


@pytest.mark.slow
def test_restoring_many_small_files_keeps_memory_flat(tmp_path: Path, keys: Keys) -> None:
    peaks = []
    for count in (MANY_FILES // 6, MANY_FILES):
        stamp = make_stamp(tmp_path / str(count), keys)
        _many_small_files(stamp.source_dir("ACS"), count)
        backup, _ = _measured(["backup"], stamp.env)
        restored, rss = _measured(
            ["restore", str(backup["backupId"]), "--to", str(tmp_path / f"r{count}")], stamp.env)
        assert restored["components"][0]["files"] == count  # type: ignore[index]
        peaks.append(rss)
    few, many = peaks
    assert many < PEAK_RSS_LIMIT, f"restore peak RSS {many / 2**20:.0f} MiB"
    assert many - few < FLAT_MARGIN, (
        f"restore peak RSS grew from {few / 2**20:.0f} MiB ({MANY_FILES // 6} files) to "
        f"{many / 2**20:.0f} MiB ({MANY_FILES} files)")
