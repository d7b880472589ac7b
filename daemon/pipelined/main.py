"""`pipelined`: parse flags, load the configuration, claim the socket, run the loop.

Owns everything that happens before the supervisor's loop starts: the
configuration (and `--check-config`), the runtime and state directories, the
lock that keeps a second daemon off the same runtime directory, replacing a
stale socket left by a dead daemon, and resolving `socket_group`.

Exit codes: 0 clean stop, 2 configuration or startup error (one line, no
traceback), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import socket
import stat
import sys

from pipeline_protocol.paths import default_runtime_dir, default_state_dir, socket_path_in

from . import __version__, control
from .config import (
    DEFAULT_CONFIG_FILE,
    Config,
    ConfigError,
    apply_log_level,
    env_warnings,
    load_config,
    render_json,
    render_toml,
    resolve_group,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

LOCK_NAME = "pipelined.lock"
JOURNAL_NAME = "journal.sqlite3"
FLAG_KEYS = ("max_workers", "max_concurrent_tasks", "default_task_timeout", "max_task_retries", "max_tasks_per_worker",
             "shutdown_grace_s", "log_level", "journal", "socket_group", "http")

log = logging.getLogger("pipelined")


class StartupError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other startup error (argparse adds the whole usage)
        self.exit(EXIT_CONFIG, f"{self.prog}: usage error: {message} (see {self.prog} --help)\n")


def _http_arg(text: str) -> str:
    """--http 8081 is --http 127.0.0.1:8081: loopback unless the operator names a host."""
    return f"127.0.0.1:{text}" if text.isdigit() else text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="pipelined", description="The pipelined supervisor daemon (runs in the foreground).")
    p.add_argument("--runtime-dir", help="directory for the control socket (default: $PIPELINED_RUNTIME_DIR, $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR/pipelined, /run/pipelined)")
    p.add_argument("--state-dir", help="directory for the journal (default: $PIPELINED_STATE_DIR, $STATE_DIRECTORY, $XDG_STATE_HOME/pipelined, /var/lib/pipelined)")
    p.add_argument("--config", help=f"TOML configuration file (default: {DEFAULT_CONFIG_FILE} if present)")
    p.add_argument("--workers", type=int, dest="max_workers", metavar="N", help="worker processes (max_workers)")
    p.add_argument("--max-concurrent-tasks", type=int, metavar="N")
    p.add_argument("--default-task-timeout", type=float, metavar="S")
    p.add_argument("--max-task-retries", type=int, metavar="N")
    p.add_argument("--max-tasks-per-worker", type=int, metavar="N")
    p.add_argument("--shutdown-grace", type=float, dest="shutdown_grace_s", metavar="S")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--socket-group", metavar="GROUP", help="give the control socket (and the runtime dir) to this group")
    p.add_argument("--http", type=_http_arg, metavar="HOST:PORT",
                   help="serve /healthz, /status and /metrics on HOST:PORT (a bare PORT means 127.0.0.1:PORT; off by default)")
    p.add_argument("--volatile", action="store_const", const=False, dest="journal", help="keep tasks in memory only: no journal, nothing survives a restart")
    p.add_argument("--check-config", action="store_true", help="print the effective configuration and where each value came from, then exit")
    p.add_argument("--json", action="store_true", help="with --check-config: print JSON instead of commented TOML")
    p.add_argument("--version", action="version", version=f"pipelined {__version__}")
    return p.parse_args(argv)


# -- the runtime directory: lock, stale socket, group --------------------------------
def prepare_runtime_dir(path: str, gid: int | None = None) -> tuple[str, int]:
    """Create the runtime dir (0750), take its lock, and clear a stale socket.

    Returns (socket path, lock fd). The lock (flock on pipelined.lock) is held
    for the daemon's life; it closes the race of two daemons starting at once,
    which probing the socket alone cannot. Workers close the fd right after
    fork, and a lock dies with its process, so a SIGKILLed daemon leaves none.
    """
    try:
        os.makedirs(path, mode=0o750, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create runtime dir {path}: {exc.strerror}") from None
    sock_path = socket_path_in(path)
    if len(sock_path.encode()) > 107:
        raise StartupError(f"socket path {sock_path} is longer than the 107 bytes a Unix socket allows; use a shorter --runtime-dir")
    lock_fd = take_lock(path, f"running on {sock_path}")  # first: a live daemon's directory is left exactly as it is
    try:
        _set_dir_access(path, gid)
        clear_stale_socket(sock_path)
    except StartupError:
        os.close(lock_fd)
        raise
    return sock_path, lock_fd


def _set_dir_access(path: str, gid: int | None) -> None:
    try:
        os.chmod(path, 0o750)  # makedirs' mode is narrowed by the umask; the group needs x to reach the socket
        if gid is not None:
            os.chown(path, -1, gid)  # the socket's group must be able to traverse its directory
    except OSError as exc:
        raise StartupError(f"cannot set the mode or group of runtime dir {path}: {exc.strerror}") from None


def take_lock(directory: str, busy: str) -> int:
    """flock <directory>/pipelined.lock for the daemon's life; StartupError naming
    the holder's pid when another daemon has it (`busy` says what it is doing)."""
    lock_path = os.path.join(directory, LOCK_NAME)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise StartupError(f"cannot open lock file {lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            who = f" (pid {holder})" if holder else ""
            raise StartupError(f"another pipelined{who} is already {busy}") from None
        raise StartupError(f"cannot lock {lock_path}: {exc.strerror}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def clear_stale_socket(sock_path: str) -> None:
    """Remove a socket file nobody listens on; refuse a live one or a non-socket."""
    try:
        st = os.lstat(sock_path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{sock_path} exists and is not a socket; remove it or pick another --runtime-dir")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(sock_path)
    except ConnectionRefusedError:
        log.info("removing stale socket %s (no daemon listens on it)", sock_path)
        os.unlink(sock_path)
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StartupError(f"cannot check {sock_path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise StartupError(f"another pipelined is already running on {sock_path}")


def prepare_state_dir(path: str, journal: bool, runtime_lock_fd: int | None = None) -> int | None:
    """Create the state dir; with a journal, lock it too: two daemons (even on
    different runtime dirs) must never share one journal. Returns the lock fd,
    None when there is nothing more to lock: no journal, or the state dir is the
    runtime dir (same lock file, already held through `runtime_lock_fd`; flock on
    a second fd of it would conflict with our own first one)."""
    try:
        os.makedirs(path, mode=0o750, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create state dir {path}: {exc.strerror}") from None
    if not journal:
        return None
    if runtime_lock_fd is not None and _same_file(os.path.join(path, LOCK_NAME), runtime_lock_fd):
        return None
    return take_lock(path, f"using the journal in {path}")


def _same_file(path: str, fd: int) -> bool:
    """True if `path` is the file open on `fd` (a symlinked or bind-mounted dir counts too)."""
    try:
        st, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def socket_gid(config: Config) -> int | None:
    """The gid for `socket_group`, checked before anything starts (ConfigError: exit 2)."""
    if not config.socket_group:
        return None
    where = f"socket_group ({config.origins.get('socket_group', 'default')})"
    gid = resolve_group(config.socket_group, where)
    if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
        raise ConfigError(f"{where}: pipelined runs as uid {os.geteuid()}, which is not in group {config.socket_group!r}, so it cannot give the socket to it")
    return gid


# -- --check-config ------------------------------------------------------------------
def check_config(config: Config, args: argparse.Namespace) -> int:
    runtime_dir = os.path.abspath(args.runtime_dir or default_runtime_dir())
    state_dir = os.path.abspath(args.state_dir or default_state_dir())
    if config.source_file:
        source = config.source_file
    else:
        source = f"none ({DEFAULT_CONFIG_FILE} is not there)"
    where = {"config_file": config.source_file, "runtime_dir": runtime_dir, "socket": socket_path_in(runtime_dir), "state_dir": state_dir}
    if args.json:
        print(render_json(config, where))
        return EXIT_OK
    header = [
        f"pipelined {__version__}: effective configuration (valid TOML; each value's origin follows '#')",
        "precedence: flag > environment (PARALLEL_*) > file > default",
        f"config file: {source}",
        f"runtime dir: {runtime_dir} (socket {where['socket']})",
        f"state dir:   {state_dir}",
        "",
    ]
    print(render_toml(config, header), end="")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flags = {k: getattr(args, k) for k in FLAG_KEYS}
    for warning in env_warnings(os.environ):
        print(f"pipelined: warning: {warning}", file=sys.stderr)
    try:
        config = load_config(args.config, os.environ, flags)
        gid = socket_gid(config)
    except ConfigError as exc:
        print(f"pipelined: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        return check_config(config, args)
    if args.json:
        print("pipelined: configuration error: --json only goes with --check-config", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    apply_log_level(config.log_level)  # and again on SIGHUP (Supervisor.reload)
    if not config.allow_commands and "*" in config.allowed_functions:
        log.warning("allow_commands = false, but allowed_functions allows every function, and a function such as "
                    "os:system runs commands too; narrow allowed_functions as well")
    runtime_dir = os.path.abspath(args.runtime_dir or default_runtime_dir())
    state_dir = os.path.abspath(args.state_dir or default_state_dir())
    try:
        _, lock_fd = prepare_runtime_dir(runtime_dir, gid)
        state_lock_fd = prepare_state_dir(state_dir, config.journal, lock_fd)
    except StartupError as exc:
        print(f"pipelined: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    control.set_socket_group(gid)
    try:
        return run_supervisor(config, args, flags, runtime_dir, state_dir)
    finally:
        os.close(lock_fd)
        if state_lock_fd is not None:
            os.close(state_lock_fd)


def run_supervisor(config: Config, args: argparse.Namespace, flags: dict, runtime_dir: str, state_dir: str) -> int:
    # Task functions are imported by module path, as `python -m` would: from the daemon's cwd.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    from .http import HttpBindError
    from .journal import Journal, JournalError
    from .store import TaskStore
    from .supervisor import Supervisor

    try:
        store = Journal(os.path.join(state_dir, JOURNAL_NAME), config.journal_sync) if config.journal else TaskStore()
        restored = store.load()  # read before any socket exists: a damaged journal changes nothing
    except JournalError as exc:
        print(f"pipelined: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    supervisor = Supervisor(config, runtime_dir, state_dir, store, restored)
    # SIGHUP re-reads the same sources; flags still win over the file and env.
    # socket_group and the directories are fixed at start (they need a restart).
    supervisor.reload_config = lambda: load_config(args.config, os.environ, flags)
    try:
        return supervisor.run()
    except HttpBindError as exc:  # raised by _setup before anything else exists
        print(f"pipelined: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
