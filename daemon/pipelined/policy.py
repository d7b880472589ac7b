"""What may run: `allowed_functions` globs and `allow_commands`, checked at submit.

Whoever can open the control socket can run code as the daemon's user; these
settings narrow what a submit may ask for, they are not a sandbox.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from pipeline_protocol import ErrorCode, ProtocolError


class Policy:
    def __init__(self, allowed_functions: list[str], allow_commands: bool):
        self.allowed_functions = list(allowed_functions)
        self.allow_commands = allow_commands
        self._everything = "*" in self.allowed_functions
        self._cache: dict[str, bool] = {}

    def _function_allowed(self, path: str) -> bool:
        ok = self._cache.get(path)
        if ok is None:
            ok = self._everything or any(fnmatch.fnmatchcase(path, pat) for pat in self.allowed_functions)
            if len(self._cache) < 10_000:
                self._cache[path] = ok
        return ok

    def check(self, specs: list[Any]) -> None:
        for spec in specs:
            if not isinstance(spec, dict):
                continue  # the validator names the shape error
            function, command = spec.get("function"), spec.get("command")
            if command is not None and not self.allow_commands:
                raise ProtocolError(ErrorCode.NOT_PERMITTED, f"task {spec.get('task_id')!r}: command tasks are not allowed here (allow_commands = false)", {"task_id": spec.get("task_id")})
            if isinstance(function, str) and not self._function_allowed(function):
                raise ProtocolError(
                    ErrorCode.NOT_PERMITTED,
                    f"task {spec.get('task_id')!r}: function {function!r} is not in allowed_functions",
                    {"task_id": spec.get("task_id"), "function": function},
                )
