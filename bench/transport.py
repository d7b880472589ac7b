"""The transport floor of one task round trip, without pipelined itself.

    python bench/transport.py [--n 4000] [--runs 3]

(1) a ping-pong between two processes over ZeroMQ ipc (DEALER/ROUTER, the
    receiver polling as the supervisor does) and over a socketpair;
(2) a bare model of a task's path: client -> daemon -> worker -> daemon -> client,
    msgpack frames, no scheduling, no journal. The client leg is ZeroMQ (the
    protocol); the worker leg is ZeroMQ (what DESIGN.md prescribes) or a
    socketpair. pipelined's own round trip cannot be faster than this floor.
p50 / p99 in microseconds, medians over --runs.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import tempfile
import time

import msgpack
import zmq

LEN = struct.Struct("!I")


class Pair:
    """A length-prefixed message channel over one end of a socketpair."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(LEN.pack(len(data)) + data)

    def recv(self) -> bytes:
        (n,) = LEN.unpack(self.sock.recv(4, socket.MSG_WAITALL))
        return self.sock.recv(n, socket.MSG_WAITALL)


def _timed(send, recv, n: int) -> tuple[float, float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        send(msgpack.packb({"id": i}))
        msgpack.unpackb(recv())
        out.append(time.perf_counter() - t0)
    out = sorted(out[n // 8 :])  # the first eighth warms up
    return out[len(out) // 2] * 1e6, out[int(len(out) * 0.99)] * 1e6


def ping_pong(kind: str, n: int, d: str) -> tuple[float, float]:
    a, b = socket.socketpair()
    path = os.path.join(d, "pp.sock")
    pid = os.fork()
    if pid == 0:
        a.close()
        if kind == "zmq":
            ctx = zmq.Context()
            s = ctx.socket(zmq.ROUTER)
            s.bind("ipc://" + path)
            b.send(b"k")
            poller = zmq.Poller()
            poller.register(s, zmq.POLLIN)
            while True:
                poller.poll()
                frames = s.recv_multipart()
                if msgpack.unpackb(frames[-1]) is None:
                    os._exit(0)
                s.send_multipart(frames)
        ch = Pair(b)
        while True:
            data = ch.recv()
            if msgpack.unpackb(data) is None:
                os._exit(0)
            ch.send(data)
    b.close()
    if kind == "zmq":
        a.recv(1)  # bound
        ctx = zmq.Context()
        c = ctx.socket(zmq.DEALER)
        c.connect("ipc://" + path)
        result = _timed(c.send, c.recv, n)
        c.send(msgpack.packb(None))
        c.close(linger=1000)
        ctx.term()
    else:
        ch = Pair(a)
        result = _timed(ch.send, ch.recv, n)
        ch.send(msgpack.packb(None))
    a.close()
    os.waitpid(pid, 0)
    return result


def task_model(worker_leg: str, n: int, d: str) -> tuple[float, float]:
    ctl_path, w_path = os.path.join(d, "ctl.sock"), os.path.join(d, "w.sock")
    a, b = socket.socketpair()
    ready_r, ready_w = os.pipe()
    wpid = os.fork()
    if wpid == 0:  # the worker
        a.close()
        if worker_leg == "zmq":
            ctx = zmq.Context()
            s = ctx.socket(zmq.DEALER)
            s.connect("ipc://" + w_path)
            s.send(b"hello")
            send, recv = s.send, s.recv
        else:
            ch = Pair(b)
            send, recv = ch.send, ch.recv
        while True:
            msg = msgpack.unpackb(recv())
            if msg is None:
                os._exit(0)
            send(msgpack.packb({"t": "done", "items": [{"id": msg["id"], "ok": True, "result": None}]}))
    b.close()
    spid = os.fork()
    if spid == 0:  # the daemon
        ctx = zmq.Context()
        ctl = ctx.socket(zmq.ROUTER)
        ctl.bind("ipc://" + ctl_path)
        poller = zmq.Poller()
        poller.register(ctl, zmq.POLLIN)
        if worker_leg == "zmq":
            ws = ctx.socket(zmq.ROUTER)
            ws.bind("ipc://" + w_path)
            ident = ws.recv_multipart()[0]
            poller.register(ws, zmq.POLLIN)
            to_worker = lambda data: ws.send_multipart([ident, data])
            from_worker, worker_key = (lambda: ws.recv_multipart()[1]), ws
        else:
            ch = Pair(a)
            to_worker, from_worker, worker_key = ch.send, ch.recv, a.fileno()
            poller.register(worker_key, zmq.POLLIN)
        os.write(ready_w, b"k")
        waiting = None
        while True:
            ready = dict(poller.poll())
            if ctl in ready:
                envelope, data = ctl.recv_multipart()
                req = msgpack.unpackb(data)
                if req is None:
                    to_worker(msgpack.packb(None))
                    os._exit(0)
                waiting = envelope
                to_worker(msgpack.packb({"t": "run", "id": req["id"], "f": "noop", "args": []}))
            if worker_key in ready:
                done = msgpack.unpackb(from_worker())
                ctl.send_multipart([waiting, msgpack.packb({"ok": True, "result": done["items"][0]["result"]})])
    a.close()
    os.read(ready_r, 1)
    os.close(ready_r)
    os.close(ready_w)
    ctx = zmq.Context()
    c = ctx.socket(zmq.DEALER)
    c.connect("ipc://" + ctl_path)
    result = _timed(c.send, c.recv, n)
    c.send(msgpack.packb(None))
    os.waitpid(spid, 0)
    os.waitpid(wpid, 0)
    c.close(linger=0)
    ctx.term()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4000, help="round trips per measurement")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    cases = [
        ("ping-pong, ZeroMQ ipc", lambda d: ping_pong("zmq", args.n, d)),
        ("ping-pong, socketpair", lambda d: ping_pong("pair", args.n, d)),
        ("task model, worker leg ZeroMQ (as DESIGN.md)", lambda d: task_model("zmq", args.n, d)),
        ("task model, worker leg socketpair", lambda d: task_model("pair", args.n, d)),
    ]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in cases}
    for _ in range(args.runs):
        for name, fn in cases:  # alternating, so drift hits every case
            with tempfile.TemporaryDirectory(prefix="bench-transport-") as d:
                results[name].append(fn(d))
    print(f"| round trip ({args.runs} runs, {args.n:,} each) | p50 µs | p99 µs |")
    print("|---|---:|---:|")
    for name, runs in results.items():
        print(f"| {name} | {statistics.median(r[0] for r in runs):,.0f} | {statistics.median(r[1] for r in runs):,.0f} |")


if __name__ == "__main__":
    main()
