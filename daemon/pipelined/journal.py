"""Journal: the durable TaskStore, an SQLite database in WAL mode.

Every accepted task is written before `submit` replies: the supervisor flushes
the store once per loop pass and only then sends that pass's replies, so one
transaction (a group commit) carries all the submits, starts and ends of a pass.
A new task is one INSERT of its spec (msgpack) and state; later changes UPDATE
only the progress columns.

synchronous=NORMAL in WAL mode survives a crash of the daemon (kill -9) with
nothing lost; a power cut may lose the last passes (set journal_sync = "full"
to fsync every commit).

Opening checks the file (`PRAGMA quick_check`) and its schema version; a
corrupt or foreign file is a JournalError naming it, never a silent reset. Older
schema versions are migrated in place, inside one transaction.
"""

from __future__ import annotations

import logging
import operator
import sqlite3
from typing import Any

from pipeline_protocol import TaskState, decode, encode

from .store import TaskStore
from .task import Task

log = logging.getLogger("pipelined.journal")

SCHEMA_VERSION = 3
APPLICATION_ID = 0x70706C64  # "ppld": tells our journal from any other SQLite file

_PROGRESS = ("state", "attempt", "retry_count", "result", "error", "reason", "start_time", "end_time", "execution_time", "worker_pid")
# A row's spec is the msgpack array of these attributes, in this order (schema
# v3; v1/v2 rows hold a map with the same keys). Append only: rows on disk rely on it.
_SPEC_FIELDS = (
    "task_id", "task_type", "function", "command", "cwd", "env", "args", "kwargs", "priority",
    "dependencies", "timeout_s", "max_retries", "retry_backoff_s", "memory_limit_mb", "workflow", "has_refs",
)

_SCHEMA_V1 = """
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    spec BLOB NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    retry_count INTEGER NOT NULL DEFAULT 0,
    result BLOB,
    error BLOB,
    reason TEXT,
    submitted_at REAL NOT NULL,
    start_time REAL,
    end_time REAL,
    execution_time REAL
);
"""

# Each step takes the schema from version N to N+1.
_MIGRATIONS = {
    1: [
        "ALTER TABLE tasks ADD COLUMN worker_pid INTEGER",
        "ALTER TABLE tasks ADD COLUMN workflow TEXT",
        "CREATE INDEX tasks_ended ON tasks(end_time) WHERE end_time IS NOT NULL AND state IN ('completed', 'failed', 'cancelled')",
    ],
    # seq becomes the rowid: rows are appended in order and found by it, instead of
    # going through an index of random task ids (half the cost of every write).
    # Retention works from memory, so the end_time index goes too.
    2: [
        "CREATE TABLE tasks_v3 ("
        " seq INTEGER PRIMARY KEY, task_id TEXT NOT NULL, spec BLOB NOT NULL, state TEXT NOT NULL,"
        " attempt INTEGER NOT NULL DEFAULT 0, retry_count INTEGER NOT NULL DEFAULT 0, result BLOB, error BLOB,"
        " reason TEXT, submitted_at REAL NOT NULL, start_time REAL, end_time REAL, execution_time REAL,"
        " worker_pid INTEGER, workflow TEXT)",
        "INSERT INTO tasks_v3 (seq, task_id, spec, state, attempt, retry_count, result, error, reason, submitted_at,"
        " start_time, end_time, execution_time, worker_pid, workflow)"
        " SELECT seq, task_id, spec, state, attempt, retry_count, result, error, reason, submitted_at,"
        " start_time, end_time, execution_time, worker_pid, workflow FROM tasks",
        "DROP TABLE tasks",
        "ALTER TABLE tasks_v3 RENAME TO tasks",
    ],
}


_spec_of = operator.attrgetter(*_SPEC_FIELDS)  # one C call: the spec fields as a tuple


def _as_is(value: Any) -> Any:
    return value


# sqlite3 binds only exact int, float and str without "adapting" them: for None
# and bytes (most of a row) it searches for an adapter in vain, which costs an
# AttributeError raised and cleared twice per parameter (about half of a flush).
# Registered adapters are found at once; these return the value unchanged.
sqlite3.register_adapter(type(None), _as_is)
sqlite3.register_adapter(bytes, _as_is)


CHECKPOINT_IDLE_COMMITS = 100  # an idle loop checkpoints once this many commits are in the WAL
CHECKPOINT_MAX_COMMITS = 2000  # a busy one waits for this many (a few MB of WAL)


class JournalError(Exception):
    pass


def _unblob(value: bytes | None) -> Any:
    return None if value is None else decode(value)


class Journal(TaskStore):
    durable = True

    def __init__(self, path: str, sync: str = "normal"):
        super().__init__()
        self.path = path
        self._new: set[str] = set()
        self._gone: list[tuple[int]] = []  # seqs of pruned rows
        self._commits = 0  # since the last checkpoint
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout = 5000")
            if self.db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise JournalError(f"{path}: the journal is corrupt (PRAGMA quick_check failed); move it aside to start empty")
            self._check_or_create()
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute(f"PRAGMA synchronous = {'FULL' if sync == 'full' else 'NORMAL'}")
            # We checkpoint ourselves (checkpoint()), when the loop is idle: SQLite's
            # automatic checkpoint would run inside a commit that a reply waits for.
            self.db.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{path}: cannot use the journal: {exc} (is it a pipelined journal? move it aside to start empty)") from None

    # -- schema -----------------------------------------------------------
    def _check_or_create(self) -> None:
        app_id = self.db.execute("PRAGMA application_id").fetchone()[0]
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables and app_id == 0:
            self._create()
            return
        if app_id != APPLICATION_ID:
            raise JournalError(f"{self.path}: not a pipelined journal (application_id {app_id:#x}); move it aside or pick another --state-dir")
        if version > SCHEMA_VERSION:
            raise JournalError(f"{self.path}: journal schema version {version} is newer than this pipelined understands ({SCHEMA_VERSION})")
        if version < SCHEMA_VERSION:
            self._migrate(version)

    def _create(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        for stmt in _SCHEMA_V1.strip().split(";"):
            if stmt.strip():
                self.db.execute(stmt)
        self.db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        self.db.execute("PRAGMA user_version = 1")
        self.db.execute("COMMIT")
        self._migrate(1, quiet=True)  # a new journal: the migrations are how it is built, not news

    def _migrate(self, version: int, quiet: bool = False) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            while version < SCHEMA_VERSION:
                for stmt in _MIGRATIONS[version]:
                    self.db.execute(stmt)
                version += 1
                if not quiet:
                    log.info("journal %s: migrated to schema version %d", self.path, version)
            self.db.execute(f"PRAGMA user_version = {version}")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- writes -----------------------------------------------------------
    def add(self, task: Task) -> None:
        super().add(task)
        self._new.add(task.task_id)

    def _forget(self, tasks: list[Task]) -> None:
        self._gone.extend((t.seq,) for t in tasks)

    def dirty_count(self) -> int:
        return len(self._dirty) + len(self._gone)

    def flush(self) -> int:
        if not self._dirty and not self._gone:
            return 0
        inserts, updates = [], []
        new = self._new
        for tid, task in self._dirty.items():
            result, error = task.result, task.error
            progress = (
                task.state.value, task.attempt, task.retry_count,
                None if result is None else encode(result), None if error is None else encode(error),
                task.reason, task.start_time, task.end_time, task.execution_time, task.worker_pid,
            )
            if tid in new:
                spec = encode(_spec_of(task))
                inserts.append((tid, task.seq, spec, task.submitted_at, task.workflow, *progress))
            else:
                updates.append((*progress, task.seq))
        db = self.db
        db.execute("BEGIN")
        try:
            if inserts:
                db.executemany(
                    "INSERT INTO tasks (task_id, seq, spec, submitted_at, workflow, state, attempt, retry_count, result, error, reason, start_time, end_time, execution_time, worker_pid) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    inserts,
                )
            if updates:
                db.executemany(
                    "UPDATE tasks SET state = ?, attempt = ?, retry_count = ?, result = ?, error = ?, reason = ?, "
                    "start_time = ?, end_time = ?, execution_time = ?, worker_pid = ? WHERE seq = ?",
                    updates,
                )
            if self._gone:
                db.executemany("DELETE FROM tasks WHERE seq = ?", self._gone)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        n = len(self._dirty)
        self._dirty.clear()
        new.clear()
        self._gone.clear()
        self._commits += 1
        return n

    def checkpoint(self, idle: bool) -> bool:
        """Copy the WAL back into the database file so that it stops growing: when
        the loop is idle, or regardless once enough commits piled up."""
        if self._commits < (CHECKPOINT_IDLE_COMMITS if idle else CHECKPOINT_MAX_COMMITS):
            return False
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self._commits = 0
        return True

    # -- reads ------------------------------------------------------------
    def load(self) -> list[Task]:
        try:
            return self._load()
        except (sqlite3.DatabaseError, ValueError, KeyError, TypeError) as exc:
            raise JournalError(f"{self.path}: a task row cannot be read ({type(exc).__name__}: {exc}); the journal is damaged, move it aside to start empty") from None

    def _load(self) -> list[Task]:
        tasks = []
        rows = self.db.execute(
            "SELECT seq, spec, submitted_at, state, attempt, retry_count, result, error, reason, start_time, end_time, execution_time, worker_pid "
            "FROM tasks ORDER BY seq"
        )
        for seq, spec_blob, submitted_at, state, attempt, retry_count, result, error, reason, start, end, exec_s, pid in rows:
            spec = decode(spec_blob)
            if isinstance(spec, list):
                spec = dict(zip(_SPEC_FIELDS, spec))
            task = Task(
                {
                    "task_id": spec["task_id"], "task_type": spec["task_type"], "function": spec["function"],
                    "command": spec["command"], "cwd": spec["cwd"], "env": spec["env"], "args": spec["args"],
                    "kwargs": spec["kwargs"], "priority": spec["priority"], "dependencies": spec["dependencies"],
                    "timeout": spec["timeout_s"], "max_retries": spec["max_retries"], "retry_backoff": spec["retry_backoff_s"],
                    "memory_limit_mb": spec["memory_limit_mb"], "workflow": spec["workflow"], "has_refs": spec["has_refs"],
                },
                seq,
                submitted_at,
            )
            task.state = TaskState(state)
            task.attempt, task.retry_count = attempt, retry_count
            task.result, task.error, task.reason = _unblob(result), _unblob(error), reason
            task.start_time, task.end_time, task.execution_time, task.worker_pid = start, end, exec_s, pid
            tasks.append(task)
        return tasks

    def close(self) -> None:
        self.flush()
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # leave one compact file behind
        except sqlite3.DatabaseError as exc:
            log.warning("journal %s: final checkpoint failed: %s", self.path, exc)
        self.db.close()
