"""HttpServer: `/healthz`, `/status` and `/metrics`, served from inside the loop.

    client ──TCP──► [listening socket, non-blocking] ──fd in the zmq.Poller──┐
                                                                            ▼
      each pass: accept (a few) → read the request head (non-blocking)
                 → answer (non-blocking sends) → close; past its budget: close

HTTP/1.0, one request per connection, GET and HEAD only. No thread: the
supervisor's single loop owns all state, and a scrape reads it in place. So
nothing here may block: every socket is non-blocking, a connection gets
REQUEST_BUDGET_S to send its request head and take its answer, and
MAX_CONNECTIONS bounds how many are open at once (a new one evicts the
oldest). A slow or garbage client is closed, never waited for.

Owns the listening socket and its connections. The routes read the
supervisor (handlers.op_status) and the metrics registry (metrics.py,
prometheus_client, imported only here and only when `http` is configured).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from typing import TYPE_CHECKING, Any

import zmq

if TYPE_CHECKING:
    from .supervisor import Supervisor

log = logging.getLogger("pipelined.http")

REQUEST_BUDGET_S = 2.0  # a connection's whole life: request head in, answer out
MAX_HEAD_BYTES = 8192
MAX_CONNECTIONS = 64
ACCEPTS_PER_PASS = 16  # fairness: the loop has tasks to run too
READ_CHUNK = 4096
TEXT = "text/plain; charset=utf-8"


class HttpBindError(Exception):
    """The `http` address cannot be used: a startup error (exit 2)."""


def parse_address(value: str) -> tuple[str, int]:
    """'127.0.0.1:8081', 'localhost:8081', '[::1]:8081' -> (host, port).

    Validated by config.py already (HOST:PORT, port 1..65535)."""
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def bind_listener(value: str) -> socket.socket:
    """A non-blocking listening socket on `value` (HOST:PORT), or HttpBindError."""
    host, port = parse_address(value)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise HttpBindError(f"http {value!r}: cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart must not wait out TIME_WAIT
        sock.bind(sockaddr)
        sock.listen(64)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise HttpBindError(f"http {value!r}: cannot listen on {sockaddr[0]} port {port}: {exc.strerror}") from None
    if not _is_loopback(sockaddr[0]):
        # The operator asked for it in their config; /status and /metrics are
        # read-only, but they tell anyone who can reach the port what runs here.
        log.warning("http: serving /healthz, /status and /metrics on %s port %d, which is not a loopback address: "
                    "anyone who can reach it can read them", sockaddr[0], port)
    return sock


class _Conn:
    __slots__ = ("deadline", "fd", "head", "out", "sock")

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.fd = sock.fileno()
        self.head = b""
        self.out: bytes | None = None  # the answer, while it is being sent
        self.deadline = deadline


class HttpServer:
    def __init__(self, address: str, sup: Supervisor):
        self.address = address
        self.sup = sup
        self.listener = bind_listener(address)
        self.fd = self.listener.fileno()
        self.conns: dict[int, _Conn] = {}
        self.poller: zmq.Poller | None = None
        from .metrics import make_registry  # prometheus_client: only a daemon with `http` loads it

        self.registry, self.task_metrics = make_registry(sup)
        self.served = 0

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def attach(self, poller: zmq.Poller) -> None:
        """Join the loop: the listening fd in the poller, the task counts on the scheduler's change hook."""
        self.poller = poller
        poller.register(self.fd, zmq.POLLIN)
        self.sup.scheduler.on_change = self.task_metrics.chain(self.sup.scheduler.on_change)
        host, port = self.listener.getsockname()[:2]
        log.info("http: serving /healthz, /status, /metrics on http://%s:%d/", f"[{host}]" if ":" in host else host, port)

    # -- the loop's step --------------------------------------------------------
    def handle(self, ready: dict, now: float) -> None:
        """One pass: accept, serve the connections that are ready, close the expired."""
        if self.fd in ready:
            self._accept(now)
        if not self.conns:
            return
        for fd, conn in list(self.conns.items()):
            if fd in ready:
                if conn.out is None:
                    self._read(conn)
                else:
                    self._write(conn)
            if fd in self.conns and now >= conn.deadline:
                self._close(conn)  # too slow, or silent: it must not hold a slot

    def next_deadline(self) -> float | None:
        return min((c.deadline for c in self.conns.values()), default=None)

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        if self.poller is not None:
            self.poller.unregister(self.fd)
        self.listener.close()

    # -- connections -------------------------------------------------------------
    def _accept(self, now: float) -> None:
        for _ in range(ACCEPTS_PER_PASS):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: log, and let the next pass try again
                log.warning("http: accept failed: %s", exc)
                return
            if len(self.conns) >= MAX_CONNECTIONS:
                # Full: the oldest connection makes room. A flood of silent clients then
                # only evicts itself, and a real request still gets its answer.
                self._close(min(self.conns.values(), key=lambda c: c.deadline))
            sock.setblocking(False)
            conn = _Conn(sock, now + REQUEST_BUDGET_S)
            self.conns[conn.fd] = conn
            self.poller.register(conn.fd, zmq.POLLIN)
            self._read(conn)  # the request often arrived with the connection

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)  # the client gave up
            return
        conn.head += data
        end = conn.head.find(b"\r\n\r\n")
        if end < 0:
            end = conn.head.find(b"\n\n")
        if end >= 0:
            self._respond(conn, *self._route(conn.head[:end]))
        elif len(conn.head) > MAX_HEAD_BYTES:
            self._respond(conn, 431, TEXT, b"request head too large\n")

    def _respond(self, conn: _Conn, code: int, ctype: str, body: bytes, head_only: bool = False) -> None:
        reason = _REASONS.get(code, "Error")
        headers = (f"HTTP/1.0 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                   "Cache-Control: no-store\r\nConnection: close\r\n\r\n")
        conn.out = headers.encode("latin-1") + (b"" if head_only else body)
        self.served += 1
        self.poller.modify(conn.fd, zmq.POLLOUT)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        self.conns.pop(conn.fd, None)
        try:
            self.poller.unregister(conn.fd)
        except KeyError:
            pass
        conn.sock.close()

    # -- routes -------------------------------------------------------------------
    def _route(self, head: bytes) -> tuple[int, str, bytes, bool]:
        """(code, content type, body, head only) for a request head."""
        line = head.split(b"\n", 1)[0].rstrip(b"\r")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, TEXT, b"bad request\n", False
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return 405, TEXT, b"only GET and HEAD\n", False
        route = ROUTES.get(target)
        if route is None:
            return 404, TEXT, b"not found: try /healthz, /status or /metrics\n", method == b"HEAD"
        try:
            code, ctype, body = route(self)
        except Exception:  # a bug of ours: answer 500, log it, the loop goes on
            log.exception("http: %s failed", target.decode("latin-1"))
            code, ctype, body = 500, TEXT, b"internal error\n"
        return code, ctype, body, method == b"HEAD"

    def healthz(self) -> tuple[int, str, bytes]:
        # This answer comes from the loop itself, so "alive" is all it can say:
        # a wedged loop answers nothing at all, and the client's timeout is
        # what reports it (a probe must set one). systemd's watchdog
        # (WATCHDOG=1 from the same loop) covers the same case.
        if self.sup.draining:
            return 503, TEXT, b"draining\n"
        return 200, TEXT, b"ok\n"

    def status(self) -> tuple[int, str, bytes]:
        from .handlers import op_status

        body = json.dumps(op_status(self.sup, {"op": "status"}, []), default=_json_default, sort_keys=True)
        return 200, "application/json", body.encode() + b"\n"

    def metrics(self) -> tuple[int, str, bytes]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)


def _json_default(obj: Any) -> Any:
    return str(obj)


ROUTES = {b"/healthz": HttpServer.healthz, b"/status": HttpServer.status, b"/metrics": HttpServer.metrics}
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}
