"""``usagemeter store verify|recover|copy``, and what every command needs to find and open a store.

A store is a directory holding a manifest (``usagemeter.manifest``) and one backend directory
(``sled`` or ``redb``), or a fleet's shared ledger at a URL (``redis://HOST:PORT/DB``, ``rediss://``,
``unix://``; a Redis Cluster's comma-separated seeds with backend ``redis-cluster``). ``report``
and ``demo`` take either; ``store verify`` and ``store recover`` work on a directory only (they
check and rewrite its files); ``store copy`` moves a ledger between the two kinds. Nothing here
creates a store except ``open_service`` on a path that has none, which only the demo does, and
``store copy``, whose destination must be new.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from usagemeter import CostMap, MeteringService, StoreError, StoreLockedError
from usagemeter.cli.output import Printer, count
from usagemeter.store import copy_store, is_shared_url, recover_store, shown, verify_store

__all__ = [
    "ALL_BACKENDS",
    "BACKENDS",
    "DEFAULT_STORE",
    "MANIFEST_NAME",
    "SHARED_BACKENDS",
    "AnyBackend",
    "Backend",
    "SharedBackend",
    "detect_backend",
    "open_service",
    "run_store_copy",
    "run_store_recover",
    "run_store_verify",
    "store_error_message",
    "store_problem",
]

Backend = Literal["sled", "redb"]  # a store directory's
BACKENDS: tuple[Backend, ...] = ("sled", "redb")
SharedBackend = Literal["redis", "redis-cluster"]  # a fleet's shared ledger's (a URL)
SHARED_BACKENDS: tuple[SharedBackend, ...] = ("redis", "redis-cluster")
AnyBackend = Literal["sled", "redb", "redis", "redis-cluster"]
ALL_BACKENDS: tuple[AnyBackend, ...] = (*BACKENDS, *SHARED_BACKENDS)
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


def store_problem(
    store: str | os.PathLike[str], *, need_manifest: bool, allow_url: bool = False
) -> str | None:
    """Why ``store`` is not an existing store directory, or None if it is one.

    With ``need_manifest=False`` a directory holding a backend directory but no manifest counts as
    a store too, so ``store verify`` / ``store recover`` can report on what is there. A shared
    ledger's URL (``redis://...``) is None with ``allow_url`` (whether it answers is found out by
    opening it), else the reason it is refused. Looks only: never creates anything.
    """
    if is_shared_url(store):
        if allow_url:
            return None
        return (
            f"{shown(store)} is a fleet's shared ledger (Redis), not a store directory: this command "
            "checks a directory's files only (`usagemeter report --store URL` opens a shared ledger, "
            "which loads every user)"
        )
    path = Path(store)
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
    store: str | None,
    backend: AnyBackend | None,
    cost_map: CostMap | None = None,
    *,
    connect_timeout: float = 5.0,
) -> MeteringService:
    """A MeteringService on ``store`` (None: memory only) with ``backend`` (None: the library default:
    the directory's store's, sled for a new one, ``redis`` for a URL). ``connect_timeout`` (seconds)
    bounds the wait for a shared ledger that does not answer (``StoreUnavailableError``)."""
    if store is None or backend is None:
        return MeteringService(cost_map, store=store, connect_timeout=connect_timeout)
    return MeteringService(cost_map, store=store, store_backend=backend, connect_timeout=connect_timeout)


def store_error_message(error: StoreError, store: str) -> str:
    """The text shown for a StoreError: what happened, naming the store; a lock says who holds it."""
    if isinstance(error, StoreLockedError):
        return f"another process holds the store {shown(store)} (stop it, then retry): {error}"
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


_Result = TypeVar("_Result")


def _run_store_tool(command: str, store: str, tool: Callable[[str], _Result]) -> _Result | None:
    """Runs ``tool(store)`` for ``usagemeter store COMMAND``: its result, or None after printing why not."""
    problem = store_problem(store, need_manifest=False)
    if problem is not None:
        print(f"usagemeter store {command}: {problem}", file=sys.stderr)
        return None
    try:
        return tool(store)
    except StoreError as error:
        message = store_error_message(error, store)
        print(f"usagemeter store {command}: {shown(store)}: {message}", file=sys.stderr)
    except OSError as error:
        print(f"usagemeter store {command}: {shown(store)}: {error}", file=sys.stderr)
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
    out.print(f"{shown(store)}: ok, every record verified")
    fields = ("backend", "format_version", "generation", "records", "users", "user_months")
    for key in fields:
        out.print(f"  {key.replace('_', ' ')}: {_describe(summary.get(key, '?'))}")
    for key, value in summary.items():  # anything else the library reports
        if key not in fields:
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
    kept = count(result["kept"], "record")
    out.print(f"{shown(store)}: kept {kept}, dropped {count(len(dropped), 'record')}")
    for description in dropped:
        # The description comes from the Rust store code as it is; printed without wrapping so a
        # long key stays on one line to copy.
        out.print(f"  dropped: {description}", wrap=False)
    return 0


def _copy_backend(store: str, given: AnyBackend | None, *, source: bool) -> str:
    """The backend a copy reads (``source``) or writes at ``store``: ``given``, else what is there
    (a source directory's store's), ``redis`` for a URL, sled (the library default) for a new one."""
    if given is not None:
        return given
    if is_shared_url(store):
        return "redis"
    detected = detect_backend(store) if source else None
    return detected if detected is not None else "sled"


def run_store_copy(
    source: str,
    destination: str,
    source_backend: AnyBackend | None = None,
    backend: AnyBackend | None = None,
) -> int:
    """``usagemeter store copy``: copies every user of ``source`` into a new store at ``destination``.

    Either is a store directory or a shared ledger's URL (``redis://...``), so a sled or redb store
    moves into Redis and back. ``source_backend`` / ``backend`` are those of the source and the
    destination (None: the source directory's store's, ``redis`` for a URL, sled for a new
    directory). Prints how many users and user months were copied; returns 0, or 1 with the error
    on stderr if the source is missing, locked or damaged, or holds no users (a Redis source whose
    ``usagemeter:users`` set lists none: a wrong database number, a flushed Redis, a lost user
    list; the destination is then not written), or the destination already holds a store (a
    directory with one, or a Redis database that is not empty).
    """
    if not is_shared_url(source):
        problem = store_problem(source, need_manifest=True)
        if problem is not None:
            print(f"usagemeter store copy: {problem}", file=sys.stderr)
            return 1
    if not is_shared_url(destination) and Path(destination).exists() and not Path(destination).is_dir():
        print(
            f"usagemeter store copy: {destination} is a file, not a directory (a store is a directory)",
            file=sys.stderr,
        )
        return 1
    from_backend = _copy_backend(source, source_backend, source=True)
    to_backend = _copy_backend(destination, backend, source=False)
    try:
        copied = copy_store(source, destination, source_backend=source_backend, destination_backend=backend)
    except StoreError as error:
        print(f"usagemeter store copy: {store_error_message(error, source)}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as error:
        print(f"usagemeter store copy: {error}", file=sys.stderr)
        return 1
    out = Printer(sys.stdout)
    out.print(
        f"copied {count(copied['users'], 'user')} ({count(copied['user_months'], 'user month')}) "
        f"from {shown(source)} ({from_backend}) to {shown(destination)} ({to_backend})",
        wrap=False,
    )
    out.print(f"  `usagemeter report --store {shlex.quote(shown(destination))}` shows it", wrap=False)
    return 0
