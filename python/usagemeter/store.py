"""Operator tools for a store directory: check it, or keep what is intact.

``verify_store(path)`` checks every record (format version, checksum, invariants, record count
against the manifest) and describes the store; ``recover_store(path)`` keeps every record whose
checksum holds, deletes the others and reports them. Both take the store's lock, so they refuse
(``StoreLockedError``) while a service has the store open.
"""

from __future__ import annotations

import os
from typing import Any

from usagemeter import _core

__all__ = ["recover_store", "verify_store"]


def verify_store(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every record of the store at ``path``.

        Returns ``{"backend", "format_version", "generation", "records", "users", "user_months"}``;
    raises ``StoreCorruptedError``, ``StoreVersionError``, ``StoreLockedError`` or ``StoreError``
    (no store there).
    """
    return _core.verify_store(os.fspath(path))


def recover_store(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Keep every record of the store at ``path`` whose checksum holds; delete the others.

    Returns ``{"kept": int, "dropped": [description, ...]}``.
    """
    return _core.recover_store(os.fspath(path))
