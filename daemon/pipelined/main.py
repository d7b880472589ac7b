"""`pipelined`: parse flags, load the configuration, claim the socket, run the loop.

Exit codes: 0 clean stop, 2 configuration or startup error (one line, no
traceback), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import socket
import stat
import sys

from pipeline_protocol.paths import default_runtime_dir, default_state_dir, socket_path_in

from . import __version__
from .config import ConfigError, load_config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = logging.getLogger("pipelined")


class StartupError(Exception):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pipelined", description="The pipelined supervisor daemon (runs in the foreground).")
    p.add_argument("--runtime-dir", help="directory for the control socket (default: $PIPELINED_RUNTIME_DIR, $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR/pipelined, /run/pipelined)")
    p.add_argument("--state-dir", help="directory for the journal (default: $PIPELINED_STATE_DIR, $STATE_DIRECTORY, $XDG_STATE_HOME/pipelined, /var/lib/pipelined)")
    p.add_argument("--config", help="TOML configuration file (default: /etc/pipelined/pipelined.toml if present)")
    p.add_argument("--workers", type=int, dest="max_workers", metavar="N", help="worker processes (max_workers)")
    p.add_argument("--max-concurrent-tasks", type=int, metavar="N")
    p.add_argument("--default-task-timeout", type=float, metavar="S")
    p.add_argument("--max-task-retries", type=int, metavar="N")
    p.add_argument("--max-tasks-per-worker", type=int, metavar="N")
    p.add_argument("--shutdown-grace", type=float, dest="shutdown_grace_s", metavar="S")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--volatile", action="store_const", const=False, dest="journal", help="keep tasks in memory only: no journal, nothing survives a restart")
    p.add_argument("--check-config", action="store_true", help="print the effective configuration and where each value came from, then exit")
    p.add_argument("--version", action="version", version=f"pipelined {__version__}")
    return p.parse_args(argv)


FLAG_KEYS = ("max_workers", "max_concurrent_tasks", "default_task_timeout", "max_task_retries", "max_tasks_per_worker", "shutdown_grace_s", "log_level", "journal")
JOURNAL_NAME = "journal.sqlite3"


def prepare_runtime_dir(path: str) -> str:
    """Create the runtime dir (0750) and make sure no live daemon owns its socket."""
    try:
        os.makedirs(path, mode=0o750, exist_ok=True)
        os.chmod(path, 0o750)  # makedirs' mode is narrowed by the umask; the group needs x to reach the socket
    except OSError as exc:
        raise StartupError(f"cannot create runtime dir {path}: {exc.strerror}") from None
    sock_path = socket_path_in(path)
    if len(sock_path.encode()) > 107:
        raise StartupError(f"socket path {sock_path} is longer than the 107 bytes a Unix socket allows; use a shorter --runtime-dir")
    try:
        st = os.lstat(sock_path)
    except FileNotFoundError:
        return sock_path
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{sock_path} exists and is not a socket; remove it or pick another --runtime-dir")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(sock_path)
    except ConnectionRefusedError:
        log.info("removing stale socket %s (no daemon listens on it)", sock_path)
        os.unlink(sock_path)
        return sock_path
    except OSError as exc:
        if exc.errno in (errno.ENOENT,):
            return sock_path
        raise StartupError(f"cannot check {sock_path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise StartupError(f"another pipelined is already running on {sock_path}")


def prepare_state_dir(path: str) -> None:
    try:
        os.makedirs(path, mode=0o750, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create state dir {path}: {exc.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flags = {k: getattr(args, k) for k in FLAG_KEYS}
    try:
        config = load_config(args.config, os.environ, flags)
    except ConfigError as exc:
        print(f"pipelined: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        effective = config.effective()
        print(json.dumps({k: {"value": v, "from": config.origins.get(k, "default")} for k, v in effective.items()}, indent=2))
        return EXIT_OK
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime_dir = os.path.abspath(args.runtime_dir or default_runtime_dir())
    state_dir = os.path.abspath(args.state_dir or default_state_dir())
    try:
        prepare_runtime_dir(runtime_dir)
        prepare_state_dir(state_dir)
    except StartupError as exc:
        print(f"pipelined: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # Task functions are imported by module path, as `python -m` would: from the daemon's cwd.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    from .journal import Journal, JournalError
    from .store import TaskStore
    from .supervisor import Supervisor

    try:
        store = Journal(os.path.join(state_dir, JOURNAL_NAME), config.journal_sync) if config.journal else TaskStore()
    except JournalError as exc:
        print(f"pipelined: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    supervisor = Supervisor(config, runtime_dir, state_dir, store)
    # SIGHUP re-reads the same sources; flags still win over the file and env.
    supervisor.reload_config = lambda: load_config(args.config, os.environ, flags)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
