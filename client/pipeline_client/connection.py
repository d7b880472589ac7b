"""Finding the daemon's socket and saying clearly why it cannot be reached."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat

from pipeline_protocol.paths import default_socket_path, strip_endpoint

from .errors import DaemonUnreachable

START_HINT = "start it with `pipelined --runtime-dir DIR`, or point PIPELINED_SOCKET / --socket at its socket"


def resolve_socket(path: str | None = None) -> str:
    return strip_endpoint(path or default_socket_path())


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"owner {user}, group {group}, mode {stat.S_IMODE(st.st_mode):04o}"


def _who(st: os.stat_result | None) -> str:
    """Who we are, and what would let us in."""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    if st is None:
        return f"you are {user}"
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"you are {user}, not in group {group}: ask to be added to it (or for the daemon's socket_group)"


def _first_closed_dir(path: str) -> str:
    """The outermost directory on the way to `path` that we may not search."""
    parent = os.path.dirname(os.path.abspath(path))
    parts = parent.split(os.sep)
    for i in range(2, len(parts) + 1):
        d = os.sep.join(parts[:i]) or os.sep
        if not os.access(d, os.X_OK):
            return d
    return parent


def probe(path: str) -> None:
    """Raise DaemonUnreachable unless something accepts connections at `path`.

    ZeroMQ connects lazily and silently retries, so without this check a missing
    daemon would only show up as a timeout.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DaemonUnreachable(path, f"no socket there (is pipelined running? {START_HINT})") from None
    except PermissionError:
        blocked = _first_closed_dir(path)
        try:
            dst: os.stat_result | None = os.stat(blocked)
            detail = _owner(dst)
        except OSError:
            dst, detail = None, "cannot be inspected"
        raise DaemonUnreachable(path, f"permission denied: cannot enter directory {blocked} ({detail}); {_who(dst)}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise DaemonUnreachable(path, "that path is not a socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(2.0)
        sock.connect(path)
    except PermissionError:
        raise DaemonUnreachable(path, f"permission denied on the socket ({_owner(st)}); {_who(st)}") from None
    except (ConnectionRefusedError, FileNotFoundError):
        raise DaemonUnreachable(path, f"a socket is there but no daemon is listening (stale socket?); {START_HINT}") from None
    except OSError as exc:
        raise DaemonUnreachable(path, str(exc)) from None
    finally:
        sock.close()
