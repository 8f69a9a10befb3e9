"""A real Samba server for the tests: ``smbd`` on 127.0.0.1, a free port, its own folders.

Fixtures (import them into a test module: ``from tests.servers.samba import samba``):

* ``samba`` (session): one smbd with the shares

  - ``plain``     read-write; SMB 3 encryption offered, not required
  - ``encrypted`` read-write; ``smb encrypt = required`` (every request encrypted)
  - ``readonly``  ``read only = yes`` (writes get access denied)
  - ``small``     a small share for disk-full tests: a ``tmpfs`` of :data:`SMALL_SHARE_BYTES`
    when this machine lets us mount one (root, CAP_SYS_ADMIN); otherwise the share lives on
    a second smbd started with ``RLIMIT_FSIZE`` = :data:`SMALL_SHARE_BYTES` (a per-file limit,
    which Samba reports as STATUS_DISK_FULL just the same). The tmpfs is mounted in a private
    mount namespace of smbd's own (``unshare --mount``), so it vanishes with smbd however the
    test run ends, and only smbd sees it: look at that share through SMB, not the folder.

* ``samba_noenc`` (session): a second smbd with ``server smb encrypt = off``, which does not
  offer SMB 3 encryption at all (for the "encryption required but not offered" test).
* ``samba_victim`` (function): a fresh smbd with one ``plain`` share that a test may freeze
  (SIGSTOP), thaw, kill or restart without disturbing the other tests.
* ``samba_variants`` (session): servers that negotiate differently, each with one ``plain``
  share, started on first use (:data:`VARIANTS`): signed-only SMB 3.1.1 (AES-GMAC), SMB
  3.0.2 signed (AES-CMAC) or encrypted (AES-128-CCM), SMB 2.1 (HMAC-SHA256), and a server
  granting at most 16 credits (less than one 2 MiB request costs).

Every server logs in ``backupuser`` / :data:`PASSWORD` (the Unix account ``root``, through a
username map, so /etc/passwd is never touched). ``server.settings(share)`` gives the
:class:`~infrabackup.settings.Settings` a test needs for that share.

Process hygiene (see /work/shared/TESTING.md): smbd runs with ``--foreground`` in the session
it creates itself, so ``os.killpg`` reaches it and the per-connection children it forks; its
standard input is a pipe this process holds, so smbd also exits when the test process dies
however it dies. ``samba-dcerpcd`` helpers that smbd may spawn are found by the unique
configuration path on their command line and stopped by pid. If smbd is not installed the
fixtures fail (never skip) with the install command.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from infrabackup.settings import Settings, load_settings

USERNAME = "backupuser"
PASSWORD = "Samba-test-pw-1"  # a test-only account on a loopback server
SMALL_SHARE_BYTES = 8 * 1024 * 1024
INSTALL_HINT = "apt-get install -y samba smbclient"
START_TIMEOUT = 15.0

_GLOBAL = """\
[global]
  server role = standalone server
  smb ports = {port}
  interfaces = 127.0.0.1
  bind interfaces only = yes
  disable netbios = yes
  private dir = {base}/private
  lock directory = {base}/lock
  state directory = {base}/state
  cache directory = {base}/cache
  pid directory = {base}/run
  ncalrpc dir = {base}/ncalrpc
  log file = {base}/log/log.%m
  log level = 1
  passdb backend = tdbsam:{base}/private/passdb.tdb
  smb passwd file = {base}/private/smbpasswd
  username map = {base}/usermap
  usershare path =
  load printers = no
  printcap name = /dev/null
  disable spoolss = yes
  map to guest = never
  server min protocol = SMB2_10
{extra}
"""


@dataclass
class SambaServer:
    """One smbd process, its configuration and its folders under ``base``."""

    base: Path
    shares: dict[str, dict[str, str]]
    extra_global: dict[str, str] = field(default_factory=dict)
    fsize_limit: int | None = None
    tmpfs_shares: dict[str, int] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _frozen: bool = False

    # ---- set-up -------------------------------------------------------------------------

    @property
    def conf(self) -> Path:
        return self.base / "smb.conf"

    def share_dir(self, share: str) -> Path:
        """The local folder behind ``share`` (tests inspect it to see what the server holds)."""
        return self.base / "shares" / share

    def _write_config(self) -> None:
        for sub in ("private", "lock", "state", "cache", "run", "log", "ncalrpc", "shares"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "private").chmod(0o700)
        (self.base / "usermap").write_text(f"root = {USERNAME}\n")
        extra = "\n".join(f"  {k} = {v}" for k, v in self.extra_global.items())
        text = _GLOBAL.format(port=self.port, base=self.base, extra=extra)
        for name, options in self.shares.items():
            folder = self.share_dir(name)
            folder.mkdir(parents=True, exist_ok=True)
            text += f"[{name}]\n  path = {folder}\n"
            text += "".join(f"  {k} = {v}\n" for k, v in options.items())
        self.conf.write_text(text)

    def _add_user(self) -> None:
        result = subprocess.run(
            ["smbpasswd", "-c", str(self.conf), "-s", "-a", "root"],
            input=f"{PASSWORD}\n{PASSWORD}\n".encode(),
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"smbpasswd failed: {result.stderr.decode(errors='replace')}")

    def setup(self) -> SambaServer:
        """Write the configuration, mount, add the user, start smbd. Returns self."""
        self.port = self.port or free_port()
        self._write_config()
        self._add_user()
        self.start()
        return self

    # ---- process control ----------------------------------------------------------------

    def start(self) -> None:
        """Start smbd and wait until it accepts connections on the port."""
        limit = self.fsize_limit

        def limit_file_size() -> None:  # runs in the child between fork and exec
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
                # With SIGXFSZ ignored a too-large write fails with EFBIG, which smbd turns
                # into STATUS_DISK_FULL, instead of killing the smbd child.
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

        log = open(self.base / "log" / "smbd.out", "ab")  # noqa: SIM115 - owned by the process
        try:
            # No start_new_session: smbd --foreground makes its own session (and fails if it
            # cannot). stdin is a pipe we hold: smbd exits when it reaches end-of-file.
            self.proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=limit_file_size if limit is not None else None,
            )
        finally:
            log.close()
        self._frozen = False
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smbd exited with {self.proc.returncode}:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"smbd did not listen on port {self.port}:\n{self.log_tail()}")

    def _command(self) -> list[str]:
        smbd = ["smbd", "--foreground", "--debug-stdout", "-s", str(self.conf)]
        if not self.tmpfs_shares:
            return smbd
        # Mount each tmpfs in a mount namespace private to smbd, then exec smbd (same pid):
        # the mounts go away with smbd's last process, even if the test run is killed.
        mounts = [
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={size},mode=0777",
                "tmpfs",
                str(self.share_dir(n)),
            ]
            for n, size in self.tmpfs_shares.items()
        ]
        script = " && ".join(shlex.join(m) for m in mounts) + ' && exec "$@"'
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            *smbd,
        ]

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # smbd leads its own process group; its per-connection children are in it too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def freeze(self) -> None:
        """SIGSTOP smbd and its children: connections stay open, nothing answers."""
        self._signal_group(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT what :meth:`freeze` stopped."""
        self._signal_group(signal.SIGCONT)
        self._frozen = False

    def kill(self) -> None:
        """SIGKILL smbd and its children at once (connections drop, nothing is cleaned)."""
        self._signal_group(signal.SIGKILL)
        self._reap()
        self._stop_helpers(signal.SIGKILL)

    def kill_connections(self) -> int:
        """SIGKILL the smbd children serving clients; the server itself keeps listening.

        What a client sees when a connection is reset while the server stays reachable.
        Returns how many were killed.
        """
        if self.proc is None or self.proc.poll() is not None:
            return 0
        killed = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                comm = (entry / "comm").read_text().strip()
                stat_fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # Connection children are named plain "smbd"; the helpers are smbd-notifyd,
            # cleanupd and the like.
            if comm == "smbd" and int(stat_fields[1]) == self.proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed += 1
        return killed

    def stop(self) -> None:
        """Stop smbd and every helper it spawned; idempotent; unmounts nothing."""
        if self.proc is not None and self.proc.poll() is None:
            if self._frozen:
                self.thaw()
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
        self._reap()
        self._stop_helpers(signal.SIGTERM)

    def restart(self) -> None:
        """Kill (if running) and start again on the same port with the same folders."""
        self.kill()
        self.start()

    def _reap(self) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def _stop_helpers(self, sig: signal.Signals) -> None:
        """Stop processes still running with our configuration (samba-dcerpcd, rpcd_*)."""
        for pid in self._our_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while self._our_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self._our_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _our_pids(self) -> list[int]:
        conf = str(self.conf).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                status = (entry / "status").read_text()
            except OSError:
                continue
            if "State:\tZ" in status:
                continue
            if conf in cmdline:
                pids.append(int(entry.name))
        return pids

    def teardown(self) -> None:
        """Stop everything and remove the folders. Safe to call twice."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        texts = []
        for path in sorted((self.base / "log").glob("*")):
            with contextlib.suppress(OSError):
                tail = path.read_text().splitlines()[-lines:]
                texts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(texts)

    # ---- for tests ----------------------------------------------------------------------

    def settings(
        self,
        share: str,
        *folders: str,
        username: str = USERNAME,
        password: str = PASSWORD,
        timeout: float = 10,
        require_encryption: bool = False,
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> Settings:
        """Settings naming ``\\\\host\\share[\\folders]`` on this server, as operators set them."""
        unc = "\\\\" + "\\".join((host, share, *folders))
        return load_settings(
            {
                "BACKUP_SHARE_PATH": unc,
                "BACKUP_SHARE_PORT": str(port or self.port),
                "BACKUP_SHARE_USERNAME": username,
                "BACKUP_SHARE_PASSWORD": password,
                "BACKUP_SHARE_TIMEOUT_SECONDS": str(timeout),
                "BACKUP_SHARE_REQUIRE_ENCRYPTION": "true" if require_encryption else "false",
            }
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_smbd() -> None:
    """Fail (never skip) when Samba is not installed."""
    missing = [tool for tool in ("smbd", "smbpasswd") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: the SMB tests need a real Samba. "
            f"Install it with: {INSTALL_HINT}",
            pytrace=False,
        )


def can_mount_tmpfs() -> bool:
    """Whether we may mount a tmpfs in a private mount namespace (root, CAP_SYS_ADMIN)."""
    if os.environ.get("INFRABACKUP_TEST_SAMBA_NO_MOUNT") or os.geteuid() != 0:
        return False
    if shutil.which("mount") is None or shutil.which("unshare") is None:
        return False
    probe = Path(tempfile.mkdtemp(prefix="tmpfs-probe-"))
    try:
        # The namespace (and the mount) ends with the unshare process.
        command = ["unshare", "--mount", "--propagation", "private", "--"]
        command += ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)]
        return subprocess.run(command, capture_output=True, check=False).returncode == 0
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


@contextlib.contextmanager
def running(server: SambaServer) -> Iterator[SambaServer]:
    """Set up ``server``, yield it, and always tear it down (also on interrupt / exit)."""
    require_smbd()
    atexit.register(server.teardown)  # in case the fixture's finaliser never runs
    try:
        yield server.setup()
    finally:
        server.teardown()
        atexit.unregister(server.teardown)


@dataclass
class SambaSet:
    """The session's servers: ``main`` (every share) and ``small`` (the disk-full share)."""

    main: SambaServer
    small: SambaServer
    small_mode: str  # "tmpfs" or "RLIMIT_FSIZE"

    def settings(self, share: str, *folders: str, **kwargs: object) -> Settings:
        server = self.small if share == "small" else self.main
        return server.settings(share, *folders, **kwargs)  # type: ignore[arg-type]

    def share_dir(self, share: str) -> Path:
        server = self.small if share == "small" else self.main
        return server.share_dir(share)

    def empty_small(self) -> None:
        """Remove what earlier tests left on the small share (one server serves the whole
        run): a test that fills it, or lists it, starts from an empty disk. Through SMB,
        as the tmpfs is visible to smbd only."""
        from infrabackup.share import open_share

        share = open_share(self.settings("small"))
        try:
            for entry in share.list_dir(""):
                if entry.is_dir:
                    share.remove_tree(entry.name)
                else:
                    share.remove(entry.name)
        finally:
            share.close()


MAIN_SHARES: dict[str, dict[str, str]] = {
    "plain": {"read only": "no"},
    "encrypted": {"read only": "no", "smb encrypt": "required"},
    "readonly": {"read only": "yes"},
}


#: Server-wide options of each variant (``samba_variants``); each serves one ``plain`` share.
VARIANTS: dict[str, dict[str, str]] = {
    "signed-3.1.1": {"server smb encrypt": "off"},
    "signed-3.0.2": {"server smb encrypt": "off", "server max protocol": "SMB3_02"},
    "encrypted-3.0.2": {"server max protocol": "SMB3_02"},
    "signed-2.1": {"server smb encrypt": "off", "server max protocol": "SMB2_10"},
    "credits-16": {"server smb encrypt": "off", "smb2 max credits": "16"},
}
_VARIANT_SHARES: dict[str, dict[str, str]] = {
    "encrypted-3.0.2": {"read only": "no", "smb encrypt": "required"},
}


class SambaVariants:
    """The variant servers of one test session, each started when first asked for."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self._servers: dict[str, SambaServer] = {}

    def __call__(self, name: str) -> SambaServer:
        server = self._servers.get(name)
        if server is None:
            server = SambaServer(
                _new_base(self._tmp, name),
                shares={"plain": _VARIANT_SHARES.get(name, {"read only": "no"})},
                extra_global=VARIANTS[name],
            )
            atexit.register(server.teardown)
            server.setup()
            self._servers[name] = server
        return server

    def teardown(self) -> None:
        for server in self._servers.values():
            server.teardown()
            atexit.unregister(server.teardown)


def _new_base(tmp: Path, name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"samba-{name}-", dir=tmp))


@pytest.fixture(scope="session")
def samba(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaSet]:
    """The session's Samba: plain, encrypted, readonly and small shares (see module doc)."""
    require_smbd()
    tmp = tmp_path_factory.mktemp("samba")
    if can_mount_tmpfs():
        main = SambaServer(
            _new_base(tmp, "main"),
            shares={**MAIN_SHARES, "small": {"read only": "no"}},
            tmpfs_shares={"small": SMALL_SHARE_BYTES},
        )
        with running(main):
            yield SambaSet(main=main, small=main, small_mode="tmpfs")
        return
    main = SambaServer(_new_base(tmp, "main"), shares=dict(MAIN_SHARES))
    small = SambaServer(
        _new_base(tmp, "small"),
        shares={"small": {"read only": "no"}},
        fsize_limit=SMALL_SHARE_BYTES,
    )
    with running(main), running(small):
        yield SambaSet(main=main, small=small, small_mode="RLIMIT_FSIZE")


@pytest.fixture(scope="session")
def samba_noenc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaServer]:
    """An smbd that does not offer SMB 3 encryption (``server smb encrypt = off``)."""
    tmp = tmp_path_factory.mktemp("samba-noenc")
    server = SambaServer(
        _new_base(tmp, "noenc"),
        shares={"plain": {"read only": "no"}},
        extra_global={"server smb encrypt": "off"},
    )
    with running(server):
        yield server


@pytest.fixture
def samba_victim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaServer]:
    """A fresh smbd for one test that freezes, kills or restarts it."""
    tmp = tmp_path_factory.mktemp("samba-victim")
    server = SambaServer(_new_base(tmp, "victim"), shares={"plain": {"read only": "no"}})
    with running(server):
        yield server


@pytest.fixture(scope="session")
def samba_variants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaVariants]:
    """Servers that negotiate other dialects, signing or credits (see :data:`VARIANTS`)."""
    require_smbd()
    variants = SambaVariants(tmp_path_factory.mktemp("samba-variants"))
    try:
        yield variants
    finally:
        variants.teardown()
