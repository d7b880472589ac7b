"""Configuration: defaults < TOML file < PARALLEL_* environment < command-line flags.

Every key is validated (type, range, unknown key with a did-you-mean); a bad
value raises ConfigError naming the key and where it came from, and `main`
exits 2 with that one line. `origins` records where each effective value came
from, for `pipelined --check-config`.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

DEFAULT_CONFIG_FILE = "/etc/pipelined/pipelined.toml"
ENV_PREFIX = "PARALLEL_"


class ConfigError(Exception):
    pass


@dataclass
class Config:
    max_workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    max_concurrent_tasks: int = 0  # 0: as many as there are workers
    max_cpu_percent: float = 80.0
    max_memory_percent: float = 80.0
    min_free_memory_mb: float = 500.0
    default_task_timeout: float = 300.0
    max_task_retries: int = 3
    default_retry_backoff: float = 0.5
    enable_resource_scheduling: bool = False
    enable_dependency_execution: bool = True
    max_tasks_per_worker: int = 0  # 0: never recycle
    allowed_functions: list[str] = field(default_factory=lambda: ["*"])
    allow_commands: bool = True
    task_types: dict[str, dict[str, int]] = field(default_factory=dict)
    shutdown_grace_s: float = 30.0
    result_ttl_s: float = 7 * 24 * 3600.0
    journal: bool = True  # false: a volatile daemon, tasks live in memory only
    journal_sync: str = "normal"  # "full": fsync every commit (survives power loss)
    socket_group: str = ""
    http: str = ""
    log_level: str = "info"
    origins: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def concurrency(self) -> int:
        return self.max_concurrent_tasks or self.max_workers

    def type_limits(self) -> dict[str, int]:
        return {name: spec["max_concurrent"] for name, spec in self.task_types.items() if "max_concurrent" in spec}

    def effective(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "origins"}


# key -> (type, low, high); None bounds mean unbounded
_NUMERIC: dict[str, tuple[type, float | None, float | None]] = {
    "max_workers": (int, 1, 512),
    "max_concurrent_tasks": (int, 0, 100_000),
    "max_cpu_percent": (float, 1, 100),
    "max_memory_percent": (float, 1, 100),
    "min_free_memory_mb": (float, 0, None),
    "default_task_timeout": (float, 0.001, 7 * 24 * 3600),
    "max_task_retries": (int, 0, 100),
    "default_retry_backoff": (float, 0, 3600),
    "max_tasks_per_worker": (int, 0, None),
    "shutdown_grace_s": (float, 0, 24 * 3600),
    "result_ttl_s": (float, 0, None),
}
_BOOL = {"enable_resource_scheduling", "enable_dependency_execution", "allow_commands", "journal"}
_STR = {"socket_group", "http", "log_level", "journal_sync"}
KEYS = sorted([*_NUMERIC, *_BOOL, *_STR, "allowed_functions", "task_types"])
ENV_KEYS = (
    "max_workers", "max_concurrent_tasks", "max_cpu_percent", "max_memory_percent",
    "min_free_memory_mb", "default_task_timeout", "max_task_retries",
    "enable_resource_scheduling", "enable_dependency_execution",
)


def _did_you_mean(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(key: str, value: Any, where: str) -> Any:
    """Check (and for strings from env or flags, parse) one value."""
    if key in _NUMERIC:
        kind, lo, hi = _NUMERIC[key]
        if isinstance(value, str):
            try:
                value = kind(value.strip())
            except ValueError:
                raise ConfigError(f"{where}: {key} must be {'an integer' if kind is int else 'a number'}, not {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise ConfigError(f"{where}: {key} must be {'an integer' if kind is int else 'a number'}, not {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"{lo:g}..{hi:g}" if hi is not None else f">= {lo:g}"
            raise ConfigError(f"{where}: {key} must be {bounds}, not {value!r}")
        return kind(value)
    if key in _BOOL:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key} must be true or false, not {value!r}")
    if key in _STR:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string, not {value!r}")
        if key == "log_level" and value.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"{where}: log_level must be debug, info, warning or error, not {value!r}")
        if key == "journal_sync" and value not in ("normal", "full"):
            raise ConfigError(f"{where}: journal_sync must be normal or full, not {value!r}")
        return value
    if key == "allowed_functions":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: allowed_functions must be a list of glob patterns like 'examples.*:*'")
        return value
    if key == "task_types":
        return _task_types(value, where)
    raise ConfigError(f"{where}: unknown key {key!r}{_did_you_mean(key, KEYS)}")


def _task_types(value: Any, where: str) -> dict[str, dict[str, int]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: task_types must be a table of [task_types.NAME] tables")
    out = {}
    for name, spec in value.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: [task_types.{name}] must be a table")
        for k, v in spec.items():
            if k != "max_concurrent":
                raise ConfigError(f"{where}: [task_types.{name}] unknown key {k!r}{_did_you_mean(k, ['max_concurrent'])}")
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{where}: [task_types.{name}] max_concurrent must be an integer >= 1, not {v!r}")
        out[name] = dict(spec)
    return out


def read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    return data


def load_config(path: str | None = None, env: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None) -> Config:
    """Build the effective configuration. `path` None: the default file if present."""
    env = os.environ if env is None else env
    cfg = Config()
    cfg.origins = {f.name: "default" for f in fields(cfg) if f.name != "origins"}
    if path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        for key, value in read_file(path).items():
            setattr(cfg, key, _coerce(key, value, path))
            cfg.origins[key] = f"file {path}"
    for key in ENV_KEYS:
        name = ENV_PREFIX + key.upper()
        if env.get(name, "") != "":
            setattr(cfg, key, _coerce(key, env[name], f"environment {name}"))
            cfg.origins[key] = f"env {name}"
    for key, value in (flags or {}).items():
        if value is not None:
            setattr(cfg, key, _coerce(key, value, f"flag --{key.replace('_', '-')}"))
            cfg.origins[key] = "flag"
    return cfg
