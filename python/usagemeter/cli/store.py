"""``usagemeter store verify|recover``, and what every command needs to find and open a store.

A store is a directory holding a manifest (``usagemeter.manifest``) and one backend directory
(``sled`` or ``redb``). Nothing here creates a store except ``open_service`` on a path that has
none, which only the demo does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from usagemeter import CostMap, MeteringService, StoreError, StoreLockedError
from usagemeter.cli.output import Printer, count
from usagemeter.store import recover_store, verify_store

__all__ = [
    "BACKENDS",
    "DEFAULT_STORE",
    "MANIFEST_NAME",
    "Backend",
    "detect_backend",
    "open_service",
    "run_store_recover",
    "run_store_verify",
    "store_error_message",
    "store_problem",
]

Backend = Literal["sled", "redb"]
BACKENDS: tuple[Backend, ...] = ("sled", "redb")
DEFAULT_STORE = "./usagemeter-data"  # where the demo persists unless told otherwise
MANIFEST_NAME = "usagemeter.manifest"  # every store directory has one (format version, backend, ...)


def detect_backend(path: str | os.PathLike[str]) -> Backend | None:
    """The backend of the store at ``path``: the ``backend=`` line of its manifest, else the one of
    ``PATH/sled`` and ``PATH/redb`` that exists; None when neither tells (no store, or both present).
    """
    directory = Path(path)
    try:
        text = (directory / MANIFEST_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, equals, value = line.partition("=")
        if equals and key.strip() == "backend":
            for backend in BACKENDS:
                if value.strip() == backend:
                    return backend
    present = [backend for backend in BACKENDS if (directory / backend).exists()]
    return present[0] if len(present) == 1 else None


def store_problem(path: Path, *, need_manifest: bool) -> str | None:
    """Why ``path`` is not an existing store directory, or None if it is one.

    With ``need_manifest=False`` a directory holding a backend directory but no manifest counts as
    a store too, so ``store verify`` / ``store recover`` can report on what is there. Looks only:
    never creates anything.
    """
    if not path.exists():
        return f"no store at {path}: the directory does not exist"
    if not path.is_dir():
        return f"no store at {path}: it is a file, not a directory"
    if (path / MANIFEST_NAME).is_file():
        return None
    if not need_manifest and any((path / backend).exists() for backend in BACKENDS):
        return None
    return f"{path} is not a usagemeter store: it has no {MANIFEST_NAME}"


def open_service(
    store: str | None, backend: Backend | None, cost_map: CostMap | None = None
) -> MeteringService:
    """A MeteringService on ``store`` (None: memory only) with ``backend`` (None: the library default)."""
    if store is None or backend is None:
        return MeteringService(cost_map, store=store)
    return MeteringService(cost_map, store=store, store_backend=backend)


def store_error_message(error: StoreError, store: str) -> str:
    """The text shown for a StoreError: what happened, naming the store; a lock says who holds it."""
    if isinstance(error, StoreLockedError):
        return f"another process holds the store {store} (stop it, then retry): {error}"
    return f"{type(error).__name__}: {error}"


def _describe(value: object) -> str:
    """A summary value as text: ints with separators, lists as their count and items."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
        return f"{len(items):,}" + (f" ({', '.join(str(item) for item in items)})" if items else "")
    return str(value)


def _run_store_tool(command: str, store: str, tool: Callable[[str], dict[str, Any]]) -> dict[str, Any] | None:
    """Runs ``tool(store)`` for ``usagemeter store COMMAND``: its result, or None after printing why not."""
    problem = store_problem(Path(store), need_manifest=False)
    if problem is not None:
        print(f"usagemeter store {command}: {problem}", file=sys.stderr)
        return None
    try:
        return tool(store)
    except StoreError as error:
        print(f"usagemeter store {command}: {store}: {store_error_message(error, store)}", file=sys.stderr)
    except OSError as error:
        print(f"usagemeter store {command}: {store}: {error}", file=sys.stderr)
    return None


def run_store_verify(store: str) -> int:
    """``usagemeter store verify``: checks every record of the store at ``store``.

    Prints a summary (backend, format version, generation, records, users, user months); returns 0;
    returns 1 with the error on stderr if the store is missing, corrupted, too new or locked.
    """
    summary = _run_store_tool("verify", store, verify_store)
    if summary is None:
        return 1
    out = Printer(sys.stdout)
    out.print(f"{store}: ok, every record verified")
    shown = ("backend", "format_version", "generation", "records", "users", "user_months")
    for key in shown:
        out.print(f"  {key.replace('_', ' ')}: {_describe(summary.get(key, '?'))}")
    for key, value in summary.items():  # anything else the library reports
        if key not in shown:
            out.print(f"  {key.replace('_', ' ')}: {_describe(value)}")
    return 0


def run_store_recover(store: str) -> int:
    """``usagemeter store recover``: keeps every record of ``store`` whose checksum holds.

    Prints how many records were kept and each one dropped; returns 0, or 1 with the error on
    stderr if the store is missing, locked or cannot be rewritten.
    """
    result = _run_store_tool("recover", store, recover_store)
    if result is None:
        return 1
    dropped = list(result["dropped"])
    out = Printer(sys.stdout)
    out.print(f"{store}: kept {count(result['kept'], 'record')}, dropped {count(len(dropped), 'record')}")
    for description in dropped:
        # The description comes from the Rust store code as it is; printed without wrapping so a
        # long key stays on one line to copy.
        out.print(f"  dropped: {description}", wrap=False)
    return 0
