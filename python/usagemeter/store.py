"""Operator tools for a store: check it, keep what is intact, or copy it elsewhere.

``verify_store(path)`` checks every record (format version, checksum, invariants, record count
against the manifest) and describes the store; ``recover_store(path)`` keeps every record whose
checksum holds, deletes the others and reports them. Both take the store's lock, so they refuse
(``StoreLockedError``) while a service has the store open. Both work on a store directory only.

``copy_store(source, destination)`` copies every user of a store (a directory, or a fleet's shared
ledger at a ``redis://`` URL) into a new one, either way: sled or redb into Redis, and back.
"""

from __future__ import annotations

import os

from usagemeter import _core
from usagemeter.types import StoreCopy, StoreRecovery, StoreSummary

__all__ = [
    "SHARED_URL_SCHEMES",
    "copy_store",
    "is_shared_url",
    "recover_store",
    "redact_url",
    "shown",
    "verify_store",
]

# What starts the URL of a fleet's shared ledger (Redis); anything else is a store directory.
SHARED_URL_SCHEMES = ("redis://", "rediss://", "unix://", "redis+unix://")


def verify_store(path: str | os.PathLike[str]) -> StoreSummary:
    """Check every record of the store at ``path``.

        Returns ``{"backend", "format_version", "generation", "records", "users", "user_months"}``;
    raises ``StoreCorruptedError``, ``StoreVersionError``, ``StoreLockedError`` or ``StoreError``
    (no store there).
    """
    return _core.verify_store(os.fspath(path))


def recover_store(path: str | os.PathLike[str]) -> StoreRecovery:
    """Keep every record of the store at ``path`` whose checksum holds; delete the others.

    Returns ``{"kept": int, "dropped": [description, ...]}``.
    """
    return _core.recover_store(os.fspath(path))


def is_shared_url(store: str | os.PathLike[str]) -> bool:
    """True when ``store`` is the URL of a fleet's shared ledger (``redis://...``), not a directory.

    A Redis Cluster's seed list (``redis://a:7000,redis://b:7001``) counts too: it starts with one.
    """
    return os.fspath(store).startswith(SHARED_URL_SCHEMES)


def redact_url(location: str | os.PathLike[str]) -> str:
    """``location`` as it may be shown: a shared ledger's URL with its password masked.

    ``redis://:secret@host:6379/0`` -> ``redis://:***@host:6379/0`` (also a user's password, a
    ``pass=`` query parameter, and each seed of a cluster's list). The real URL is only ever
    passed to the connection; every message, log line, report and ``store_path`` shows this.
    """
    return _core.redact_url(os.fspath(location))


def shown(store: str | os.PathLike[str] | None) -> str:
    """A store for messages: a directory as it is, a shared ledger's URL redacted, None as "none"."""
    return "none" if store is None else redact_url(store)


def copy_store(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    source_backend: str | None = None,
    destination_backend: str | None = None,
) -> StoreCopy:
    """Copy every user of the store at ``source`` into a new store at ``destination``.

    Either may be a store directory (sled or redb) or a shared ledger's URL (``redis://...``; a
    Redis Cluster's comma-separated seeds with backend ``"redis-cluster"``). A backend of None is
    the directory's own store's (source), sled (a new directory), or ``"redis"`` (a URL). The
    source is verified record by record first; the destination must be new: a directory with no
    store, or an empty Redis database, else ``StoreError``. A source without users (a Redis
    ledger whose ``usagemeter:users`` set lists none) is a ``StoreError`` too, the destination
    not written: a copy of nothing is a mistake, and would leave a new empty store in the way of
    the right one. Returns ``{"users", "user_months"}``.
    """
    return _core.copy_store(os.fspath(source), os.fspath(destination), source_backend, destination_backend)
