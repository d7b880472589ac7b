"""The files under test: which ones are copied from TARGET, and which shard owns each.

Owns the selection rules (Python sources only; no caches, virtualenvs or
installed packages; only what ruff can read is linted) and the deterministic
split of the manifest into shards. The copy is the only thing ever edited; TARGET is only read.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Folders never copied: caches, VCS data, installed third-party code.
SKIP_DIRS = frozenset({"__pycache__", "__pypackages__", "site-packages", "dist-packages", "node_modules"})
# Generated files this big are not worth linting, and would unbalance a shard.
MAX_FILE_BYTES = 5_000_000


def select_files(target: Path, exclude: Path | None = None) -> Iterator[tuple[str, Path]]:
    """Yield (relative posix path, absolute path) of candidate .py files, sorted.

    `exclude` is a folder inside `target` to leave out (the work folder, when
    someone points TARGET at a folder that contains it).
    """
    for root, dirs, files in os.walk(target):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if _wanted_dir(here / d, exclude))
        for name in sorted(files):
            path = here / name
            if name.endswith(".py") and path.is_file():
                yield path.relative_to(target).as_posix(), path


def _wanted_dir(path: Path, exclude: Path | None) -> bool:
    name = path.name
    if name in SKIP_DIRS or name.startswith("."):  # .git, .venv, .tox, ...
        return False
    if exclude is not None and path == exclude:
        return False
    # A virtualenv, whatever it is called (the stdlib has a package named "venv").
    return not (path / "pyvenv.cfg").exists()


def copy_file(src: Path, dest: Path) -> dict[str, Any] | str:
    """Copy one file; return its manifest entry, or why it is not to be linted.

    Files not to be linted are still copied, unchanged, so the copy stays a
    complete tree that can be imported and tested like the original.
    """
    data = src.read_bytes()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    if len(data) > MAX_FILE_BYTES:
        return f"larger than {MAX_FILE_BYTES // 1_000_000} MB"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # Ruff reads UTF-8 only; a PEP 263 latin-1 file would be a warning on
        # stderr and silently missing from every count.
        return "not UTF-8 (ruff reads UTF-8 only)"
    return {"bytes": len(data), "lines": text.count("\n"), "sha256": hashlib.sha256(data).hexdigest()}


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shard_files(files: list[dict[str, Any]], shard: int, shards: int) -> list[str]:
    """The paths shard `shard` of `shards` owns, balanced by size.

    Largest file first, each to the shard with the fewest bytes so far (ties:
    lowest shard index). Deterministic for a given manifest, so scan, fix and
    validate shard N always see the same files, and every file has exactly one
    owner — fix shards never edit the same file at once.
    """
    heap = [(0, i) for i in range(shards)]
    owned: list[str] = []
    for entry in sorted(files, key=lambda f: (-f["bytes"], f["path"])):
        load, index = heapq.heappop(heap)
        if index == shard:
            owned.append(entry["path"])
        heapq.heappush(heap, (load + max(entry["bytes"], 1), index))
    return sorted(owned)
