"""The benchmark: infrabackup beside `smbclient put/get` and `restic backup`, same data, same run.

Usage: ``python -m bench.bench [--gib 1] [--files 20000] [--repeat 3] [--encrypt] [--out DIR]``
(``make bench`` runs it with the defaults; ``make bench BENCH_ARGS=--encrypt`` compares with
SMB 3 encryption; ``--files 0`` skips the small-file tree). It starts its own Samba on
127.0.0.1 with signing on, as in production, and no SMB encryption offered, so that both
clients sign and neither encrypts (infrabackup encrypts whenever the server offers it); it
makes the data (one file of incompressible bytes, and a tree of small files), and runs each
tool ``--repeat`` times, interleaved, printing the median throughput (MiB/s of source
bytes), the median peak RSS, the median CPU seconds of the tool's own processes and of smbd
(its connection processes included) during that run, and the ratios to the peers as a
Markdown table. Not a test: it asserts nothing, it measures.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infrabackup.keys.wrap import generate_certificate  # noqa: E402
from tests.servers.samba import PASSWORD, USERNAME, SambaServer  # noqa: E402

MIB = 1024 * 1024
# Runs a command and prints its wall time, peak RSS and CPU seconds on stderr's last line.
_MEASURE = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "dt = time.perf_counter() - t\n"
    "use = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "rss, cpu = use.ru_maxrss * 1024, use.ru_utime + use.ru_stime\n"
    "print(f'MEASURE {dt} {rss} {code} {cpu}', file=sys.stderr)\n"
)
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    tool: str
    data: str
    nbytes: int
    seconds: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    smbd_cpu: list[float] = field(default_factory=list)

    def add(self, sample: tuple[float, int, float, float]) -> None:
        seconds, rss, cpu, smbd = sample
        self.seconds.append(seconds)
        self.rss.append(rss)
        self.cpu.append(cpu)
        self.smbd_cpu.append(smbd)

    @property
    def mib_s(self) -> float:
        return self.nbytes / MIB / statistics.median(self.seconds)

    @property
    def peak_mib(self) -> float:
        return statistics.median(self.rss) / MIB


def smbd_cpu_seconds(server: SambaServer) -> float:
    """CPU seconds smbd has used so far: the server, its live children, and (through the
    server's cutime/cstime) every connection process that has exited and been reaped."""
    assert server.proc is not None
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, pgid = int(entry.name), int(fields[2])
        if pgid != server.proc.pid:
            continue
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        total += utime + stime + (cutime + cstime if pid == server.proc.pid else 0)
    return total / _TICK


def _connections_gone(server: SambaServer, seconds: float = 5.0) -> None:
    """Wait until smbd's connection processes exited (so their CPU time is counted)."""
    assert server.proc is not None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        children = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                comm = (entry / "comm").read_text().strip()
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children += comm == "smbd" and ppid == server.proc.pid
        if not children:
            return
        time.sleep(0.05)


def measure(cmd: list[str], env: dict[str, str] | None = None,
            server: SambaServer | None = None) -> tuple[float, int, float, float]:
    """(wall seconds, peak RSS, CPU seconds of the command, CPU seconds of smbd)."""
    before = smbd_cpu_seconds(server) if server is not None else 0.0
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], env={**os.environ, **(env or {})},
        capture_output=True, text=True, check=False,
    )
    line = [x for x in proc.stderr.splitlines() if x.startswith("MEASURE ")][-1]
    _, seconds, rss, code, cpu = line.split()
    if code != "0":
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{proc.stderr[-3000:]}")
    smbd = 0.0
    if server is not None:
        _connections_gone(server)
        smbd = smbd_cpu_seconds(server) - before
    return float(seconds), int(rss), float(cpu), smbd


def make_data(root: Path, gib: float, files: int) -> tuple[Path, int, Path, int]:
    big_dir = root / "big"
    big_dir.mkdir(parents=True)
    big = big_dir / "disk.vhdx"
    size = int(gib * 1024 * MIB)
    with open(big, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n
    tree = root / "tree"
    rng = random.Random(1)  # noqa: S311 - file sizes, not secrets
    total = 0
    for i in range(files):
        path = tree / f"role{i % 20:02d}" / f"dir{(i // 20) % 50:02d}" / f"state-{i:05d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        n = rng.randint(512, 8192)
        path.write_bytes(os.urandom(n))
        total += n
    return big_dir, size, tree, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the large file")
    parser.add_argument("--files", type=int, default=20000, help="small files in the tree")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="keep the work folder here")
    parser.add_argument("--encrypt", action="store_true",
                        help="SMB 3 encryption required on the share and for smbclient "
                             "(default: signing only, for both)")
    args = parser.parse_args()

    work = args.out or Path(tempfile.mkdtemp(prefix="infrabackup-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    for tool in ("smbclient", "restic", "smbd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: run 'make system-deps' first")
    # As an installed package runs: from bytecode. Under PYTHONDONTWRITEBYTECODE (set in
    # many dev shells) an editable install would otherwise compile every module in every
    # measured run, about 0.15 s each.
    compileall.compile_dir(REPO / "shared" / "infrabackup", quiet=1)
    print(f"making data in {work} ...", file=sys.stderr)
    big_dir, big_size, tree, tree_size = make_data(work / "data", args.gib, args.files)

    # Like for like: by default the share offers no SMB encryption, so infrabackup (which
    # uses encryption whenever it is offered) and smbclient both sign only; --encrypt
    # requires encryption of both.
    protection = "required" if args.encrypt else "off"
    server = SambaServer(base=work / "samba", shares={"bench": {"read only": "no"}},
                         extra_global={"server smb encrypt": protection}).setup()
    try:
        results = run_all(work, server, args, big_dir, big_size, tree, tree_size)
    finally:
        server.teardown()
        if args.out is None:  # a temporary folder of a few GiB: not left behind
            shutil.rmtree(work, ignore_errors=True)
    print_table(results, args)


def run_all(work: Path, server: SambaServer, args: argparse.Namespace, big_dir: Path,
            big_size: int, tree: Path, tree_size: int) -> list[Result]:
    keys = work / "keys"
    keys.mkdir(exist_ok=True)
    cert = generate_certificate("bench", "bench-pfx-pw")
    (keys / "b.cer").write_bytes(cert.cer_der)
    (keys / "b.pfx").write_bytes(cert.pfx)
    share_dir = server.share_dir("bench")
    base_env = {
        "BACKUP_SHARE_PATH": "\\\\127.0.0.1\\bench",
        "BACKUP_SHARE_PORT": str(server.port),
        "BACKUP_SHARE_USERNAME": USERNAME,
        "BACKUP_SHARE_PASSWORD": PASSWORD,
        "BACKUP_EXTERNAL_DOMAIN": "contoso.com",
        "BACKUP_REGION": "nyc",
        "BACKUP_STAMP_VERSION": "1.2408.1.50",
        "BACKUP_ENCRYPTION_CERT": str(keys / "b.cer"),
        "BACKUP_DECRYPTION_CERT": str(keys / "b.pfx"),
        "BACKUP_DECRYPTION_CERT_PASSWORD": "bench-pfx-pw",
    }
    smb = ["smbclient", "//127.0.0.1/bench", "-p", str(server.port),
           "-U", f"{USERNAME}%{PASSWORD}",
           "--client-protection=" + ("encrypt" if args.encrypt else "sign")]
    cli = [sys.executable, "-m", "infrabackup"]
    results: list[Result] = []
    datasets = [("1 file", big_dir, big_size)]
    if args.files:
        datasets.append((f"{args.files} files", tree, tree_size))
    for label, source, nbytes in datasets:
        env = {**base_env, "BACKUP_SOURCES": json.dumps(
            [{"name": "Data", "type": "directory", "path": str(source)}])}
        ours_b = Result("infrabackup backup", label, nbytes)
        ours_r = Result("infrabackup restore", label, nbytes)
        put = Result("smbclient put", label, nbytes)
        get = Result("smbclient get", label, nbytes)
        restic = Result("restic backup (local repo)", label, nbytes)
        for i in range(args.repeat):
            print(f"{label}: round {i + 1} of {args.repeat}", file=sys.stderr)
            clear(share_dir)
            ours_b.add(measure([*cli, "backup"], env, server))
            backup_id = latest_id(cli, env)
            dest = work / f"restore-{i}"
            ours_r.add(measure([*cli, "restore", backup_id, "--to", str(dest)], env, server))
            shutil.rmtree(dest)
            clear(share_dir)
            put.add(measure([*smb, "-c", f'lcd "{source}"; prompt OFF; recurse ON; mput *'],
                            server=server))
            got = work / f"get-{i}"
            got.mkdir()
            get.add(measure([*smb, "-c", f'lcd "{got}"; prompt OFF; recurse ON; mget *'],
                            server=server))
            shutil.rmtree(got)
            repo = work / f"restic-{i}"
            renv = {"RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(repo)}
            subprocess.run(["restic", "init"], env={**os.environ, **renv},
                           capture_output=True, check=True)
            restic.add(measure(["restic", "backup", "--quiet", str(source)], renv))
            shutil.rmtree(repo)
        results += [ours_b, ours_r, put, get, restic]
    clear(share_dir)
    return results


def clear(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def latest_id(cli: list[str], env: dict[str, str]) -> str:
    out = subprocess.run([*cli, "list", "--json"], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout
    return str(json.loads(out)["backups"][0]["backupId"])


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    by = {(r.tool, r.data): r for r in results}
    mode = "SMB 3 encryption" if args.encrypt else "signing, no encryption"
    print(f"\nMedian of {args.repeat} runs; Samba on 127.0.0.1, {mode}; "
          f"{os.cpu_count()} CPUs; MiB/s of source bytes; CPU seconds of the tool's "
          "processes and of smbd during the run.\n")
    print("| data | tool | MiB/s | peak RSS (MiB) | CPU s | smbd CPU s | ratio |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in results:
        ratio = ""
        if r.tool == "infrabackup backup":
            put = by[("smbclient put", r.data)]
            restic = by[("restic backup (local repo)", r.data)]
            ratio = (f"{r.mib_s / put.mib_s:.2f}× smbclient put, "
                     f"{r.mib_s / restic.mib_s:.2f}× restic")
        elif r.tool == "infrabackup restore":
            get = by[("smbclient get", r.data)]
            ratio = f"{r.mib_s / get.mib_s:.2f}× smbclient get"
        smbd = f"{statistics.median(r.smbd_cpu):.2f}" if r.tool.startswith(("infra", "smb")) else ""
        print(f"| {r.data} | {r.tool} | {r.mib_s:.0f} | {r.peak_mib:.0f} | "
              f"{statistics.median(r.cpu):.2f} | {smbd} | {ratio} |")
    if not args.files:
        return
    big = by[("infrabackup backup", "1 file")]
    small = by[("infrabackup backup", f"{args.files} files")]
    per_byte = (statistics.median(small.seconds) / small.nbytes) / (
        statistics.median(big.seconds) / big.nbytes)
    print(f"\nSmall-file tree time per byte: {per_byte:.2f}× the large file's.")


if __name__ == "__main__":
    main()
