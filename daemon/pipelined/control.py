"""The control socket's edge: frames in, one reply map out, whatever arrives.

A request is [identity, payload] (DEALER clients, one frame: the cheapest) or
[identity, b"", payload] (REQ clients, or DEALERs that add the delimiter).
Anything else (wrong frame count, bytes that are not msgpack, msgpack of the
wrong shape, an unknown op or version) gets an error reply, or is dropped when
there is no one to answer; state never changes. Frames over the size limit are
refused by ZeroMQ itself (MAXMSGSIZE) before they reach Python.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import zmq

from pipeline_protocol import PROTOCOL_VERSION, ErrorCode, ProtocolError, decode, encode, error, ok
from pipeline_protocol.codec import MAX_FRAME_BYTES

from .handlers import DEFERRED, HANDLERS

if TYPE_CHECKING:
    from .supervisor import Supervisor

log = logging.getLogger("pipelined.control")

MAX_REQUESTS_PER_PASS = 256  # keep the loop fair to workers under a flood of requests
# Plain ints: pyzmq's constants are IntFlag enums, and enum arithmetic is slow on a hot path.
NOBLOCK = int(zmq.NOBLOCK)
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
RCVMORE = int(zmq.RCVMORE)
SNDMORE_NOBLOCK = int(zmq.SNDMORE) | NOBLOCK


def send_frames(sock: zmq.Socket, head: list[bytes], data: bytes) -> None:
    """send_multipart without its per-frame enum arithmetic (a hot path)."""
    send = sock.send
    for frame in head:
        send(frame, SNDMORE_NOBLOCK)
    send(data, NOBLOCK)


_socket_gid: int | None = None  # set once by main from `socket_group`, before the supervisor binds


def set_socket_group(gid: int | None) -> None:
    """The group the control socket is given after bind (None: the daemon's own)."""
    global _socket_gid
    _socket_gid = gid


def bind_control(ctx: zmq.Context, path: str, mode: int = 0o660, gid: int | None = None) -> zmq.Socket:
    """Bind the ROUTER at `path`, born with `mode` (no window), then given to the socket group.

    Whoever can open this socket can run code as the daemon's user: the mode
    and group are the access control.
    """
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES + 4096)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    old = os.umask(0o777 & ~mode)  # the socket file is born with the right mode: no window
    try:
        sock.bind("ipc://" + path)
    finally:
        os.umask(old)
    gid = _socket_gid if gid is None else gid
    if gid is not None:
        os.chown(path, -1, gid)  # main checked that we may (root, or a member of the group)
    os.chmod(path, mode)  # after chown: a chown by non-root may clear mode bits
    return sock


def split_frames(frames: list[bytes]) -> tuple[list[bytes], bytes | None]:
    """(envelope to reply with, payload or None when the frame layout is wrong)."""
    if len(frames) == 3 and frames[1] == b"":
        return frames[:2], frames[2]
    if len(frames) == 2 and frames[1] != b"":
        return frames[:1], frames[1]
    return [frames[0], b""], None


def handle_payload(sup: Supervisor, envelope: list[bytes], payload: bytes | None, n_frames: int) -> dict[str, Any] | None:
    """Serve one request; returns the reply to send, or None when it was parked."""
    if payload is None:
        return error(ErrorCode.INVALID_REQUEST, f"expected one payload frame after the envelope, got {n_frames - 1} frames")
    rid = None
    try:
        req = decode(payload)
        if not isinstance(req, dict):
            raise ProtocolError(ErrorCode.INVALID_REQUEST, f"a request must be a map, not {type(req).__name__}")
        rid = req.get("rid")
        if not isinstance(rid, (int, str, type(None))) or isinstance(rid, bool):
            rid = None
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "rid must be an integer or a string")
        version = req.get("v")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {version!r} is not supported (this daemon speaks {PROTOCOL_VERSION})", {"supported": [PROTOCOL_VERSION]})
        op = req.get("op")
        handler = HANDLERS.get(op) if isinstance(op, str) else None
        if handler is None:
            raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r:.60}", {"ops": sorted(HANDLERS)})
        sup.last_frame_bytes = len(payload)
        fields = handler(sup, req, envelope)
        if fields is DEFERRED:
            return None
        return ok(rid, **fields)
    except ValueError as exc:  # undecodable bytes
        return error(ErrorCode.INVALID_REQUEST, str(exc), rid)
    except ProtocolError as exc:
        return error(exc.code, exc.message, rid, exc.details)
    except Exception as exc:  # a bug of ours: log it, answer, keep serving
        log.exception("internal error serving a request")
        return error(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", rid)


def send_reply(sock: zmq.Socket, envelope: list[bytes], reply: dict[str, Any]) -> None:
    try:
        data = encode(reply)
        if len(data) > MAX_FRAME_BYTES:
            data = _fitted(reply, len(data))
    except (TypeError, ValueError) as exc:
        data = encode(error(ErrorCode.INTERNAL, f"reply could not be encoded: {exc}", reply.get("rid")))
    try:
        send_frames(sock, envelope, data)
    except zmq.Again:
        log.warning("dropping a reply: the client is not reading")
    except zmq.ZMQError as exc:
        log.warning("dropping a reply: %s", exc)


OMITTED_COST = 32  # bytes a left-out result still takes: None and the result_omitted flag, rounded up


def _fitted(reply: dict[str, Any], size: int) -> bytes:
    """A reply over the frame limit (which no client would read): a list or wait
    of many big results. The biggest results are left out, each record saying
    so (`result_omitted`; `get` or `result` fetches it), until the reply fits."""
    records = reply.get("tasks")
    if isinstance(records, list):
        sized = sorted(((len(encode(r.get("result"))), i) for i, r in enumerate(records)), reverse=True)
        for result_size, i in sized:
            if size <= MAX_FRAME_BYTES - 65536 or result_size <= OMITTED_COST:
                break
            records[i] = {**records[i], "result": None, "result_omitted": True}
            size -= result_size - OMITTED_COST
        data = encode(reply)
        if len(data) <= MAX_FRAME_BYTES:
            return data
        size = len(data)
    message = f"the reply would be {size} bytes, over the {MAX_FRAME_BYTES}-byte limit: ask for fewer tasks (limit) [too_large]"
    return encode(error(ErrorCode.TOO_LARGE, message, reply.get("rid")))


def serve_pending(sup: Supervisor, sock: zmq.Socket, outbox: list) -> int:
    """Serve the requests waiting on the socket, up to a fair share per pass.

    Replies go to `outbox`, sent after the pass's journal flush: a client never
    hears "accepted" for a task that is not on disk yet.
    """
    served = 0
    recv, getsockopt = sock.recv, sock.getsockopt
    while served < MAX_REQUESTS_PER_PASS and getsockopt(EVENTS) & POLLIN:
        frames = [recv(NOBLOCK)]
        while getsockopt(RCVMORE):
            frames.append(recv(NOBLOCK))
        served += 1
        envelope, payload = split_frames(frames)
        reply = handle_payload(sup, envelope, payload, len(frames))
        if reply is not None:
            outbox.append((envelope, reply))
    return served
