"""Configuration: defaults < TOML file < PARALLEL_* environment < command-line flags.

Every key is validated (type, range, unknown key with a did-you-mean); a bad
value raises ConfigError naming the key and where it came from, and `main`
exits 2 with that one line. `origins` records where each effective value came
from, for `pipelined --check-config`, whose output (`render_toml`) is itself a
valid configuration file with each value's origin as a comment.
"""

from __future__ import annotations

import difflib
import grp
import json
import logging
import math
import os
import re
import sys
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
    prefetch: bool = True  # hand a busy worker short tasks early (docs/ARCHITECTURE.md: Prefetch and batching)
    journal: bool = True  # false: a volatile daemon, tasks live in memory only
    journal_sync: str = "normal"  # "full": fsync every commit (survives power loss)
    socket_group: str = ""
    http: str = ""
    log_level: str = "info"
    origins: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    source_file: str | None = field(default=None, repr=False, compare=False)  # the TOML file read, if any

    @property
    def concurrency(self) -> int:
        return self.max_concurrent_tasks or self.max_workers

    def type_limits(self) -> dict[str, int]:
        return {name: spec["max_concurrent"] for name, spec in self.task_types.items() if "max_concurrent" in spec}

    def effective(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_KEYS}


_NOT_KEYS = {"origins", "source_file"}

# key -> (type, low, high); None bounds mean unbounded
_NUMERIC: dict[str, tuple[type, float | None, float | None]] = {
    "max_workers": (int, 1, 512),
    "max_concurrent_tasks": (int, 0, 100_000),
    "max_cpu_percent": (float, 1, 100),
    "max_memory_percent": (float, 1, 100),
    "min_free_memory_mb": (float, 0, 1 << 40),
    "default_task_timeout": (float, 0.001, 7 * 24 * 3600),
    "max_task_retries": (int, 0, 100),
    "default_retry_backoff": (float, 0, 3600),
    "max_tasks_per_worker": (int, 0, 1 << 31),
    "shutdown_grace_s": (float, 0, 24 * 3600),
    "result_ttl_s": (float, 0, 10 * 365 * 24 * 3600),
}
_BOOL = {"enable_resource_scheduling", "enable_dependency_execution", "allow_commands", "journal", "prefetch"}
_STR = {"socket_group", "http", "log_level", "journal_sync"}
KEYS = sorted([*_NUMERIC, *_BOOL, *_STR, "allowed_functions", "task_types"])
ENV_KEYS = (
    "max_workers", "max_concurrent_tasks", "max_cpu_percent", "max_memory_percent",
    "min_free_memory_mb", "default_task_timeout", "max_task_retries",
    "enable_resource_scheduling", "enable_dependency_execution",
)
ENV_NAMES = tuple(ENV_PREFIX + key.upper() for key in ENV_KEYS)
# Flags whose name is not simply --key-with-dashes (for messages and origins).
FLAG_NAMES = {"max_workers": "--workers", "shutdown_grace_s": "--shutdown-grace", "journal": "--volatile"}
TASK_TYPE_KEYS = ["max_concurrent"]
MAX_TYPE_CONCURRENCY = 100_000
_LOG_LEVELS = ("debug", "info", "warning", "error")
_GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$|^[0-9]+$")


def flag_name(key: str) -> str:
    return FLAG_NAMES.get(key, "--" + key.replace("_", "-"))


def _did_you_mean(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind_name(kind: type) -> str:
    return "an integer" if kind is int else "a number"


def _shown(value: Any) -> str:
    """repr() for a message, a huge number cut short (a 400-digit max_workers is not worth 400 digits)."""
    text = repr(value)
    if len(text) <= 40:
        return text
    digits = sum(c.isdigit() for c in text)
    return f"{text[:20]}... ({digits} digits)" if digits > len(text) // 2 else f"{text[:40]}..."


def _numeric(key: str, value: Any, where: str) -> int | float:
    kind, lo, hi = _NUMERIC[key]
    bounds = f"between {lo:g} and {hi:g}" if hi is not None else f">= {lo:g}"
    if isinstance(value, str):
        text = value.strip()
        try:
            value = kind(text)
        except ValueError:
            if kind is int and text.lstrip("+-").isdigit():  # past Python's int digit limit: out of range all the same
                raise ConfigError(f"{where}: {key} must be {bounds}, not {_shown(text)}") from None
            raise ConfigError(f"{where}: {key} must be {_kind_name(kind)}, not {_shown(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ConfigError(f"{where}: {key} must be {_kind_name(kind)}, not {_shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):  # nan slips through every comparison below
        # (an int is always finite, and math.isfinite cannot even take one too big for a float)
        raise ConfigError(f"{where}: {key} must be a finite number, not {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{where}: {key} must be {bounds}, not {_shown(value)}")
    return kind(value)


def _boolean(key: str, value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
    raise ConfigError(f"{where}: {key} must be true or false, not {value!r}")


def _string(key: str, value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, not {value!r}")
    if key == "log_level":
        if value.lower() not in _LOG_LEVELS:
            raise ConfigError(f"{where}: log_level must be debug, info, warning or error, not {value!r}{_did_you_mean(value.lower(), list(_LOG_LEVELS))}")
        return value.lower()
    if key == "journal_sync" and value not in ("normal", "full"):
        raise ConfigError(f"{where}: journal_sync must be \"normal\" or \"full\", not {value!r}")
    if key == "socket_group" and value and not _GROUP_NAME.match(value):
        raise ConfigError(f"{where}: socket_group must be a group name or a numeric gid, not {value!r}")
    if key == "http" and value:
        _check_http(value, where)
    return value


def _check_http(value: str, where: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{where}: http must be HOST:PORT (like \"127.0.0.1:8081\"), or \"\" for off, not {value!r}")


def _allowed_functions(value: Any, where: str) -> list[str]:
    if isinstance(value, str):  # from the environment or a flag: comma-separated
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where}: allowed_functions must be a list of glob patterns like [\"examples.*:*\"], not {value!r:.80}")
    return list(value)


def _coerce(key: str, value: Any, where: str) -> Any:
    """Check (and for strings from env or flags, parse) one value."""
    if key in _NUMERIC:
        return _numeric(key, value, where)
    if key in _BOOL:
        return _boolean(key, value, where)
    if key in _STR:
        return _string(key, value, where)
    if key == "allowed_functions":
        return _allowed_functions(value, where)
    if key == "task_types":
        return _task_types(value, where)
    raise ConfigError(f"{where}: unknown key {key!r}{_did_you_mean(key, KEYS)}")


def _task_types(value: Any, where: str) -> dict[str, dict[str, int]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: task_types must be [task_types.NAME] tables, not {value!r:.80}")
    out = {}
    for name, spec in value.items():
        if not name:
            raise ConfigError(f"{where}: [task_types] a task type needs a non-empty name")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: [task_types.{name}] must be a table with max_concurrent = N, not {spec!r:.80}")
        for k, v in spec.items():
            if k not in TASK_TYPE_KEYS:
                raise ConfigError(f"{where}: [task_types.{name}] unknown key {k!r}{_did_you_mean(k, TASK_TYPE_KEYS)}")
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_TYPE_CONCURRENCY:
                raise ConfigError(f"{where}: [task_types.{name}] max_concurrent must be an integer between 1 and {MAX_TYPE_CONCURRENCY}, not {_shown(v)}")
        if "max_concurrent" not in spec:
            raise ConfigError(f"{where}: [task_types.{name}] needs max_concurrent = N")
        out[name] = dict(spec)
    return out


_TOML_POSITION = re.compile(r"^(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")
_TOML_END = re.compile(r"^(?P<msg>.*) \(at end of document\)$")


def _toml_error(path: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    text = str(exc)
    m = _TOML_POSITION.match(text)
    if m:
        return ConfigError(f"{path}:{m['line']}: TOML syntax error at line {m['line']}, column {m['col']}: {m['msg']}")
    m = _TOML_END.match(text)
    if m:
        return ConfigError(f"{path}: TOML syntax error at the end of the file: {m['msg']}")
    return ConfigError(f"{path}: TOML syntax error: {text}")


def key_line(text: str, key: str) -> int | None:
    """The line a top-level key (or a table of that name) is on, for messages; best effort."""
    name = re.escape(key)
    pattern = re.compile(rf"""^\s*(?:(?:{name}|"{name}"|'{name}')\s*[=.]|\[\[?\s*(?:{name}|"{name}")\s*[\].])""")
    for no, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return no
    return None


def read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        data = tomllib.loads(raw.decode())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied (pipelined runs as uid {os.geteuid()})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(path, exc) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except ValueError as exc:  # tomllib lets int()'s digit limit through as a plain ValueError
        raise _huge_integer_error(path, raw.decode(errors="replace"), exc) from None
    return data


def _huge_integer_error(path: str, text: str, exc: ValueError) -> ConfigError:
    """An integer too long for Python to read: name its key and line when we can find it."""
    limit = sys.get_int_max_str_digits()
    if limit and "integer string conversion" in str(exc):
        long_number = re.compile(r"^\s*([^=#\s][^=#]*?)\s*=\s*[-+]?[0-9_]{%d,}" % (limit + 1))
        for no, line in enumerate(text.splitlines(), 1):
            m = long_number.match(line)
            if m:
                return ConfigError(f"{path}:{no}: {m[1].strip()} is an integer of more than {limit} digits; no setting takes such a number")
        return ConfigError(f"{path}: an integer of more than {limit} digits; no setting takes such a number")
    return ConfigError(f"{path}: cannot be read: {exc}")


def load_config(path: str | None = None, env: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None) -> Config:
    """Build the effective configuration. `path` None: the default file if present."""
    env = os.environ if env is None else env
    cfg = Config()
    cfg.origins = {key: "default" for key in cfg.effective()}
    if path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        cfg.source_file = path
        data = read_file(path)
        text = _text_of(path)
        for key, value in data.items():
            if key == "task_types" and isinstance(value, dict):
                value = _file_task_types(value, path, text)
            line = key_line(text, key)
            setattr(cfg, key, _coerce(key, value, path if line is None else f"{path}:{line}"))
            cfg.origins[key] = f"file {path}"
    for key, name in zip(ENV_KEYS, ENV_NAMES):
        if env.get(name, "") != "":
            setattr(cfg, key, _coerce(key, env[name], f"environment variable {name}"))
            cfg.origins[key] = f"env {name}"
    for key, value in (flags or {}).items():
        if value is not None:
            setattr(cfg, key, _coerce(key, value, f"flag {flag_name(key)}"))
            cfg.origins[key] = f"flag {flag_name(key)}"
    return cfg


def _file_task_types(value: dict, path: str, text: str) -> dict:
    """Check each [task_types.NAME] table with the line it starts on in the message."""
    for name, spec in value.items():
        quoted = re.escape(name)
        pattern = re.compile(rf"""^\s*\[\s*task_types\s*\.\s*(?:{quoted}|"{quoted}"|'{quoted}')\s*\]""")
        line = next((no for no, ln in enumerate(text.splitlines(), 1) if pattern.match(ln)), None) or key_line(text, "task_types")
        _task_types({name: spec}, path if line is None else f"{path}:{line}")
    return value


def _text_of(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError):  # read_file just read it; a race at worst costs the line number
        return ""


def log_level_number(level: str) -> int:
    return logging.getLevelName(level.upper())


def apply_log_level(level: str) -> None:
    """Make `level` ("debug".."error") the daemon's log level: set on the root
    logger, which every pipelined.* logger inherits from (at start and on SIGHUP)."""
    logging.getLogger().setLevel(log_level_number(level))


def env_warnings(env: Mapping[str, str] | None = None) -> list[str]:
    """PARALLEL_* variables that look like misspelt settings (ignored, so say so).

    Only near misses: other tools (GNU parallel) use PARALLEL_* names of their own.
    """
    env = os.environ if env is None else env
    out = []
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in ENV_NAMES:
            close = difflib.get_close_matches(name, ENV_NAMES, n=1, cutoff=0.85)
            if close:
                out.append(f"environment variable {name} is not a pipelined setting and is ignored (did you mean {close[0]}?)")
    return out


def resolve_group(name: str, where: str = "socket_group") -> int:
    """The gid of a group name (or numeric gid); ConfigError if there is no such group."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        pass
    if name.isdigit():
        return int(name)  # a bare gid need not have a name
    raise ConfigError(f"{where}: no group named {name!r} on this machine (create it with `groupadd --system {name}`, or fix the name)")


# -- --check-config output ----------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML rendering for {value!r}")


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def render_toml(cfg: Config, header: list[str] = ()) -> str:
    """The effective configuration as TOML, each value's origin in a comment."""
    lines = [f"# {h}".rstrip() for h in header]
    values = cfg.effective()
    task_types = values.pop("task_types")
    width = max(len(k) for k in values)
    for key, value in values.items():
        text = f"{key:<{width}} = {_toml_value(value)}"
        lines.append(f"{text:<{width + 24}} # {cfg.origins.get(key, 'default')}")
    if not task_types:
        lines.append(f"# task_types: none (no per-type limits) # {cfg.origins.get('task_types', 'default')}")
    for name, spec in task_types.items():
        lines.append("")
        lines.append(f"[task_types.{_toml_key(name)}]  # {cfg.origins.get('task_types', 'default')}")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in spec.items())
    return "\n".join(lines) + "\n"


def render_json(cfg: Config, extra: dict[str, Any] | None = None) -> str:
    doc = dict(extra or {})
    doc["settings"] = {k: {"value": v, "from": cfg.origins.get(k, "default")} for k, v in cfg.effective().items()}
    return json.dumps(doc, indent=2)
