"""sd_notify without libsystemd: READY, STATUS, WATCHDOG, STOPPING, RELOADING.

systemd passes $NOTIFY_SOCKET (a path, or '@name' for the abstract namespace)
and, with WatchdogSec=, $WATCHDOG_USEC. Every send is one non-blocking datagram;
a missing or dead listener is never a reason to fail. WATCHDOG=1 is sent from
the main loop at half the interval, so a wedged loop really is caught.
The variables are removed from the environment once read, so no worker or
task inherits them.
"""

from __future__ import annotations

import os
import socket
import time

NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    def __init__(self, env: dict[str, str] | None = None):
        if env is None:
            # Like sd_notify(unset_environment=1): workers and the commands they run
            # must not inherit the socket and talk to systemd in our name.
            env = {name: os.environ.pop(name) for name in NOTIFY_VARS if name in os.environ}
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        self.watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self.next_watchdog: float | None = time.monotonic() if self.watchdog_s else None
        self._sock: socket.socket | None = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")
        self._last_status = status

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def watchdog(self, now: float) -> None:
        """Ping the watchdog if half its interval has passed; call once per loop pass."""
        if self.next_watchdog is not None and now >= self.next_watchdog:
            self.send("WATCHDOG=1")
            self.next_watchdog = now + self.watchdog_s / 2

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd (>= 253, Type=notify-reload) match the reload.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def reloaded(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
