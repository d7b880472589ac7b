"""Where the daemon's runtime and state directories, and its socket, live.

Runtime dir: --runtime-dir, $PIPELINED_RUNTIME_DIR, $RUNTIME_DIRECTORY (systemd),
$XDG_RUNTIME_DIR/pipelined, else /run/pipelined (root) or /tmp/pipelined-<uid>.
State dir: --state-dir, $PIPELINED_STATE_DIR, $STATE_DIRECTORY (systemd),
$XDG_STATE_HOME/pipelined, else /var/lib/pipelined (root) or ~/.local/state/pipelined.
Clients: --socket, $PIPELINED_SOCKET, else <runtime dir>/pipelined.sock.
Events (`pipelinectl watch`): events.sock, in the same directory as the control socket.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

SOCKET_NAME = "pipelined.sock"
EVENTS_SOCKET_NAME = "events.sock"


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            # systemd may pass several directories separated by ':'; ours is the first.
            return value.split(":")[0]
    return None


def default_runtime_dir(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    explicit = _first(env, "PIPELINED_RUNTIME_DIR", "RUNTIME_DIRECTORY")
    if explicit:
        return explicit
    if env.get("XDG_RUNTIME_DIR"):
        return os.path.join(env["XDG_RUNTIME_DIR"], "pipelined")
    if os.geteuid() == 0:
        return "/run/pipelined"
    return f"/tmp/pipelined-{os.geteuid()}"


def default_state_dir(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    explicit = _first(env, "PIPELINED_STATE_DIR", "STATE_DIRECTORY")
    if explicit:
        return explicit
    if env.get("XDG_STATE_HOME"):
        return os.path.join(env["XDG_STATE_HOME"], "pipelined")
    if os.geteuid() == 0:
        return "/var/lib/pipelined"
    return os.path.join(os.path.expanduser("~"), ".local", "state", "pipelined")


def socket_path_in(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, SOCKET_NAME)


def default_socket_path(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("PIPELINED_SOCKET") or socket_path_in(default_runtime_dir(env))


def endpoint(path: str) -> str:
    """The ZeroMQ endpoint of a socket path."""
    return path if path.startswith("ipc://") else "ipc://" + path


def strip_endpoint(path: str) -> str:
    return path[len("ipc://"):] if path.startswith("ipc://") else path


def events_socket_path(control_socket: str) -> str:
    """The daemon's event socket (XPUB), next to its control socket."""
    return os.path.join(os.path.dirname(strip_endpoint(control_socket)), EVENTS_SOCKET_NAME)
