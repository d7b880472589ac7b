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
        parent = os.path.dirname(path)
        try:
            detail = _owner(os.stat(parent))
        except OSError:
            detail = "unreadable"
        raise DaemonUnreachable(path, f"permission denied on its directory {parent} ({detail})") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise DaemonUnreachable(path, "that path is not a socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(2.0)
        sock.connect(path)
    except PermissionError:
        raise DaemonUnreachable(path, f"permission denied ({_owner(st)}); ask for the socket's group") from None
    except (ConnectionRefusedError, FileNotFoundError):
        raise DaemonUnreachable(path, f"a socket is there but no daemon is listening (stale socket?); {START_HINT}") from None
    except OSError as exc:
        raise DaemonUnreachable(path, str(exc)) from None
    finally:
        sock.close()
