"""The alternatives a Python server would otherwise meter with: SQLite and Redis.

Both keep the same records as usagemeter and the reference, exactly: the user's month record
(total, count, and ``{units, cost, count}`` per usage type), the user's per-app records and app
totals, the global month aggregate, and the two budget pools (monthly allowance, then lifetime
purchased credit, then overage). Money is exact: costs reach 10^30 attocents, beyond any 64-bit
integer, so every amount is stored as two integer columns (or hash fields), whole µ¢ and the
attocent fraction (0 <= frac < 10^12), and additions carry from the fraction into the µ¢.

- ``SqliteMeter``: one transaction per call (``BEGIN IMMEDIATE``, read the user's pools and
  credit, split the cost in Python, then one UPSERT per record), in WAL mode with
  ``synchronous=NORMAL`` (the usual WAL setting: a commit is not fsynced, a checkpoint is), or
  the same statements with one commit per ``commit_every`` calls.
- ``RedisMeter``: one Lua script per call (atomic on the server: HMGET the pools, split, HSET
  them, HINCRBY every counter), run per call or pipelined (``pipeline`` calls per round trip),
  against a ``RedisServer`` the bench starts on a free loopback port.

Neither validates input the way usagemeter does (a price lookup is the only check): they are
the cheapest honest version of "the same records in a database".
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from reference import (
    ATTOCENTS_PER_MICROCENT,
    GLOBAL_APP,
    UserView,
    microcents_half_up,
    month_window,
    price_attocents,
)

__all__ = ["RedisMeter", "RedisServer", "SqliteMeter", "redis_unavailable", "scratch_directory"]

SCALE = ATTOCENTS_PER_MICROCENT


class ActorLike(Protocol):
    """What the alternatives read from an actor."""

    @property
    def user_id(self) -> str: ...
    @property
    def app_id(self) -> str | None: ...


def _split(micro: int, frac: int) -> int:
    return micro * SCALE + frac


def _counter(units: int, cost: int, count: int) -> dict[str, int]:
    """A report's ``{"units", "cost", "count"}`` (cost: exact attocents, reported in µ¢)."""
    return {"units": units, "cost": microcents_half_up(cost), "count": count}


def _pools(cost: int, allowance: int, used: int, credit_left: int) -> tuple[int, int, int]:
    """``cost`` split over the allowance left, then purchased credit, then overage."""
    room = max(0, allowance - used)
    from_allowance = min(cost, room)
    from_purchased = min(cost - from_allowance, credit_left)
    return from_allowance, from_purchased, cost - from_allowance - from_purchased


class _MonthCache:
    """This UTC month, read from the clock on every call (as the other candidates do)."""

    def __init__(self) -> None:
        self._window: tuple[float, float, str] = (0.0, 0.0, "")

    def now(self) -> str:
        now = time.time()
        start, end, label = self._window
        if start <= now < end:
            return label
        self._window = month_window(now)
        return self._window[2]


# --------------------------------------------------------------------------------------------
# SQLite
#
# Units stay plain INTEGER columns: SQLite's integers are signed 64-bit, enough for this workload
# (a few thousand units a call); usagemeter's 2**64-1 units per record would need split columns
# too. Every money column is split, as said above.

_SCHEMA = """
CREATE TABLE user_month (
    user TEXT NOT NULL, month TEXT NOT NULL,
    total_micro INTEGER NOT NULL, total_frac INTEGER NOT NULL, count INTEGER NOT NULL,
    allowance_micro INTEGER NOT NULL, allowance_frac INTEGER NOT NULL,
    purchased_micro INTEGER NOT NULL, purchased_frac INTEGER NOT NULL,
    overage_micro INTEGER NOT NULL, overage_frac INTEGER NOT NULL,
    PRIMARY KEY (user, month)) WITHOUT ROWID;
CREATE TABLE user_type (
    user TEXT NOT NULL, month TEXT NOT NULL, type TEXT NOT NULL,
    units INTEGER NOT NULL, cost_micro INTEGER NOT NULL, cost_frac INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (user, month, type)) WITHOUT ROWID;
CREATE TABLE app_month (
    user TEXT NOT NULL, month TEXT NOT NULL, app TEXT NOT NULL,
    total_micro INTEGER NOT NULL, total_frac INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (user, month, app)) WITHOUT ROWID;
CREATE TABLE app_type (
    user TEXT NOT NULL, month TEXT NOT NULL, app TEXT NOT NULL, type TEXT NOT NULL,
    units INTEGER NOT NULL, cost_micro INTEGER NOT NULL, cost_frac INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (user, month, app, type)) WITHOUT ROWID;
CREATE TABLE global_type (
    month TEXT NOT NULL, type TEXT NOT NULL,
    units INTEGER NOT NULL, cost_micro INTEGER NOT NULL, cost_frac INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (month, type)) WITHOUT ROWID;
CREATE TABLE global_month (
    month TEXT PRIMARY KEY,
    total_micro INTEGER NOT NULL, total_frac INTEGER NOT NULL, count INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE credit (
    user TEXT PRIMARY KEY,
    purchased_micro INTEGER NOT NULL, purchased_frac INTEGER NOT NULL,
    consumed_micro INTEGER NOT NULL, consumed_frac INTEGER NOT NULL) WITHOUT ROWID;
"""

# Adds (micro, frac) with the carry: in an UPDATE every right-hand side reads the old row.
_CARRY = (
    "{m} = {m} + excluded.{m} + ({f} + excluded.{f}) / 1000000000000, "
    "{f} = ({f} + excluded.{f}) % 1000000000000"
)
_COST = _CARRY.format(m="cost_micro", f="cost_frac")
_TOTAL = _CARRY.format(m="total_micro", f="total_frac")

_SELECT_POOLS = (
    "SELECT total_micro, total_frac, allowance_micro, allowance_frac FROM user_month "
    "WHERE user = ? AND month = ?"
)
_SELECT_CREDIT = (
    "SELECT purchased_micro, purchased_frac, consumed_micro, consumed_frac FROM credit WHERE user = ?"
)
_UPSERT_USER_MONTH = (
    "INSERT INTO user_month VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (user, month) DO UPDATE SET total_micro = excluded.total_micro, "
    "total_frac = excluded.total_frac, count = count + 1, "
    "allowance_micro = excluded.allowance_micro, allowance_frac = excluded.allowance_frac, "
    + _CARRY.format(m="purchased_micro", f="purchased_frac")
    + ", "
    + _CARRY.format(m="overage_micro", f="overage_frac")
)
_UPSERT_USER_TYPE = (
    "INSERT INTO user_type VALUES (?, ?, ?, ?, ?, ?, 1) ON CONFLICT (user, month, type) "
    f"DO UPDATE SET units = units + excluded.units, {_COST}, count = count + 1"
)
_UPSERT_APP_MONTH = (
    "INSERT INTO app_month VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (user, month, app) "
    f"DO UPDATE SET {_TOTAL}, count = count + 1"
)
_UPSERT_APP_TYPE = (
    "INSERT INTO app_type VALUES (?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (user, month, app, type) "
    f"DO UPDATE SET units = units + excluded.units, {_COST}, count = count + 1"
)
_UPSERT_GLOBAL_TYPE = (
    "INSERT INTO global_type VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (month, type) "
    f"DO UPDATE SET units = units + excluded.units, {_COST}, count = count + 1"
)
_UPSERT_GLOBAL_MONTH = (
    "INSERT INTO global_month VALUES (?, ?, ?, 1) ON CONFLICT (month) "
    f"DO UPDATE SET {_TOTAL}, count = count + 1"
)
_CONSUME_CREDIT = (
    "UPDATE credit SET consumed_micro = consumed_micro + ? + (consumed_frac + ?) / 1000000000000, "
    "consumed_frac = (consumed_frac + ?) % 1000000000000 WHERE user = ?"
)


class SqliteMeter:
    """``increment_usage`` as a transaction of UPSERTs in a SQLite file (WAL mode).

    ``commit_every=1`` commits every call; ``commit_every=1000`` keeps one transaction open over
    1,000 calls (``flush()`` commits the rest).
    """

    def __init__(
        self,
        path: Path,
        prices: Iterable[tuple[str, Decimal]],
        monthly_allowance: int,
        *,
        commit_every: int = 1,
    ) -> None:
        """Create the database at ``path`` (a new file)."""
        self._prices = {name: price_attocents(price) for name, price in prices}
        self._allowance = monthly_allowance * SCALE
        self._commit_every = commit_every
        self._pending = 0
        self._month = _MonthCache()
        # Autocommit mode: transactions are explicit, so the pool read is inside the write lock.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Commit and close."""
        self.flush()
        self._db.close()

    def flush(self) -> None:
        """Commit the open transaction, if any."""
        if self._pending:
            self._db.execute("COMMIT")
            self._pending = 0

    def update_addon_credit(self, user_id: str, amount: int) -> None:
        """Add purchased credit (µ¢) to a user."""
        self.flush()
        self._db.execute(
            "INSERT INTO credit VALUES (?, ?, 0, 0, 0) ON CONFLICT (user) "
            "DO UPDATE SET purchased_micro = purchased_micro + excluded.purchased_micro",
            (user_id, amount),
        )

    def increment_usage(self, actor: ActorLike, usage_type: str, amount: int) -> int | None:
        """Record ``amount`` units; the month total in µ¢ (None while a batch is uncommitted)."""
        cost = self._prices[usage_type] * amount
        cost_micro, cost_frac = divmod(cost, SCALE)
        month = self._month.now()
        user = actor.user_id
        app = actor.app_id or GLOBAL_APP
        db = self._db
        if self._pending == 0:
            db.execute("BEGIN IMMEDIATE")
        row = db.execute(_SELECT_POOLS, (user, month)).fetchone()
        total, used = (0, 0) if row is None else (_split(row[0], row[1]), _split(row[2], row[3]))
        credit = db.execute(_SELECT_CREDIT, (user,)).fetchone()
        credit_left = 0 if credit is None else _split(credit[0], credit[1]) - _split(credit[2], credit[3])
        from_allowance, from_purchased, overage = _pools(cost, self._allowance, used, credit_left)
        total += cost
        purchased_micro, purchased_frac = divmod(from_purchased, SCALE)
        total_micro, total_frac = divmod(total, SCALE)
        allowance_micro, allowance_frac = divmod(used + from_allowance, SCALE)
        overage_micro, overage_frac = divmod(overage, SCALE)
        db.execute(
            _UPSERT_USER_MONTH,
            (
                *(user, month, total_micro, total_frac, allowance_micro, allowance_frac),
                *(purchased_micro, purchased_frac, overage_micro, overage_frac),
            ),
        )
        db.execute(_UPSERT_USER_TYPE, (user, month, usage_type, amount, cost_micro, cost_frac))
        db.execute(_UPSERT_APP_MONTH, (user, month, app, cost_micro, cost_frac))
        db.execute(_UPSERT_APP_TYPE, (user, month, app, usage_type, amount, cost_micro, cost_frac))
        db.execute(_UPSERT_GLOBAL_TYPE, (month, usage_type, amount, cost_micro, cost_frac))
        db.execute(_UPSERT_GLOBAL_MONTH, (month, cost_micro, cost_frac))
        if from_purchased:
            db.execute(_CONSUME_CREDIT, (purchased_micro, purchased_frac, purchased_frac, user))
        self._pending += 1
        if self._pending >= self._commit_every:
            db.execute("COMMIT")
            self._pending = 0
            return microcents_half_up(total)
        return None

    def user_view(self, user_id: str) -> UserView:
        """Everything recorded for ``user_id`` this month, as ``ReferenceMeter.user_view``."""
        self.flush()
        month = self._month.now()
        db = self._db
        usage: dict[str, Any] = {"total": 0}
        pools = (0, 0, 0)
        row = db.execute(
            "SELECT total_micro, total_frac, allowance_micro, allowance_frac, purchased_micro, "
            "purchased_frac, overage_micro, overage_frac FROM user_month WHERE user = ? AND month = ?",
            (user_id, month),
        ).fetchone()
        if row is not None:
            usage["total"] = microcents_half_up(_split(row[0], row[1]))
            pools = (_split(row[2], row[3]), _split(row[4], row[5]), _split(row[6], row[7]))
        for usage_type, units, micro, frac, count in db.execute(
            "SELECT type, units, cost_micro, cost_frac, count FROM user_type WHERE user = ? AND month = ?",
            (user_id, month),
        ):
            usage[usage_type] = _counter(units, _split(micro, frac), count)
        apps = {
            app: {"total": microcents_half_up(_split(micro, frac)), "count": count}
            for app, micro, frac, count in db.execute(
                "SELECT app, total_micro, total_frac, count FROM app_month WHERE user = ? AND month = ?",
                (user_id, month),
            )
        }
        app_usage: dict[str, dict[str, Any]] = {
            app: {"total": totals["total"]} for app, totals in apps.items()
        }
        for app, usage_type, units, micro, frac, count in db.execute(
            "SELECT app, type, units, cost_micro, cost_frac, count FROM app_type "
            "WHERE user = ? AND month = ?",
            (user_id, month),
        ):
            app_usage[app][usage_type] = _counter(units, _split(micro, frac), count)
        credit = db.execute("SELECT consumed_micro, consumed_frac FROM credit WHERE user = ?", (user_id,))
        consumed = credit.fetchone()
        return UserView(
            usage=usage,
            apps=apps,
            app_usage=app_usage,
            pools_attocents=pools,
            consumed_attocents=0 if consumed is None else _split(consumed[0], consumed[1]),
        )

    def global_usage(self) -> dict[str, Any]:
        """This month's aggregate, as ``get_global_usage``."""
        self.flush()
        month = self._month.now()
        row = self._db.execute(
            "SELECT total_micro, total_frac FROM global_month WHERE month = ?", (month,)
        ).fetchone()
        usage: dict[str, Any] = {"total": 0 if row is None else microcents_half_up(_split(row[0], row[1]))}
        for usage_type, units, micro, frac, count in self._db.execute(
            "SELECT type, units, cost_micro, cost_frac, count FROM global_type WHERE month = ?", (month,)
        ):
            usage[usage_type] = _counter(units, _split(micro, frac), count)
        return usage


# --------------------------------------------------------------------------------------------
# Redis

# KEYS: user month, user types, user app totals, user app types (this app), global types,
#       global month, user credit.
# ARGV: usage type, app, units, cost µ¢, cost attocent fraction, allowance µ¢.
# Money is (µ¢, fraction) pairs: Lua numbers are doubles, exact below 2^53 µ¢ (~$90 million per
# record), and every integer is sent to Redis through string.format('%d').
_LUA = """
local SCALE = 1000000000000
local function s(x) return string.format('%d', x) end
local function add(key, mfield, ffield, m, f)
  local nf = redis.call('HINCRBY', key, ffield, s(f))
  if nf >= SCALE then
    redis.call('HINCRBY', key, ffield, s(-SCALE))
    m = m + 1
  end
  if m ~= 0 then redis.call('HINCRBY', key, mfield, s(m)) end
end
local function sub(am, af, bm, bf)
  local m, f = am - bm, af - bf
  if f < 0 then f = f + SCALE; m = m - 1 end
  return m, f
end
local function less(am, af, bm, bf) return am < bm or (am == bm and af < bf) end
local function plus(am, af, bm, bf)
  local m, f = am + bm, af + bf
  if f >= SCALE then f = f - SCALE; m = m + 1 end
  return m, f
end
local utype, app, units = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cm, cf, allowance = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local um = redis.call('HMGET', KEYS[1], 'tm', 'tf', 'am', 'af')
local tm, tf = tonumber(um[1]) or 0, tonumber(um[2]) or 0
local am, af = tonumber(um[3]) or 0, tonumber(um[4]) or 0
local cr = redis.call('HMGET', KEYS[7], 'pm', 'pf', 'cm', 'cf')
local lm, lf = sub(tonumber(cr[1]) or 0, tonumber(cr[2]) or 0, tonumber(cr[3]) or 0, tonumber(cr[4]) or 0)
-- allowance first, then purchased credit, then overage
local rm, rf = sub(allowance, 0, am, af)
if rm < 0 then rm, rf = 0, 0 end
local xm, xf = cm, cf
if less(rm, rf, xm, xf) then xm, xf = rm, rf end
local restm, restf = sub(cm, cf, xm, xf)
local pm, pf = restm, restf
if less(lm, lf, pm, pf) then pm, pf = lm, lf end
local om, of = sub(restm, restf, pm, pf)
tm, tf = plus(tm, tf, cm, cf)
am, af = plus(am, af, xm, xf)
redis.call('HSET', KEYS[1], 'tm', s(tm), 'tf', s(tf), 'am', s(am), 'af', s(af))
redis.call('HINCRBY', KEYS[1], 'n', 1)
add(KEYS[1], 'pm', 'pf', pm, pf)
add(KEYS[1], 'om', 'of', om, of)
if pm > 0 or pf > 0 then add(KEYS[7], 'cm', 'cf', pm, pf) end
redis.call('HINCRBY', KEYS[2], utype .. '|u', s(units))
add(KEYS[2], utype .. '|m', utype .. '|f', cm, cf)
redis.call('HINCRBY', KEYS[2], utype .. '|n', 1)
add(KEYS[3], app .. '|m', app .. '|f', cm, cf)
redis.call('HINCRBY', KEYS[3], app .. '|n', 1)
redis.call('HINCRBY', KEYS[4], utype .. '|u', s(units))
add(KEYS[4], utype .. '|m', utype .. '|f', cm, cf)
redis.call('HINCRBY', KEYS[4], utype .. '|n', 1)
redis.call('HINCRBY', KEYS[5], utype .. '|u', s(units))
add(KEYS[5], utype .. '|m', utype .. '|f', cm, cf)
redis.call('HINCRBY', KEYS[5], utype .. '|n', 1)
add(KEYS[6], 'tm', 'tf', cm, cf)
redis.call('HINCRBY', KEYS[6], 'n', 1)
return {s(tm), s(tf)}
"""


def redis_unavailable() -> str | None:
    """Why the Redis benchmarks cannot run here, or None when they can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    try:
        importlib.import_module("redis")
    except ImportError:
        return "the redis Python package is not installed (pip install redis)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on a free loopback port, without persistence; a context manager."""

    def __init__(self) -> None:
        """Choose a port and a scratch directory; ``start()`` runs the server."""
        self.port = _free_port()
        self._directory = tempfile.mkdtemp(prefix="usagemeter-bench-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers."""
        self._process = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self._directory,
                "--databases", "4",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (the one this object started, by its pid) and remove its directory."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        """Start the server."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server."""
        self.stop()


class RedisMeter:
    """``increment_usage`` as one Lua script call per usage, per call or pipelined."""

    def __init__(
        self,
        port: int,
        db: int,
        prices: Iterable[tuple[str, Decimal]],
        monthly_allowance: int,
        *,
        pipeline: int = 1,
    ) -> None:
        """Connect to database ``db`` of the server on ``port`` (emptied first)."""
        redis: Any = importlib.import_module("redis")  # optional: imported only when Redis runs
        self._client: Any = redis.Redis(host="127.0.0.1", port=port, db=db, decode_responses=True)
        self._client.flushdb()
        self._script = self._client.register_script(_LUA)
        self._prices = {name: price_attocents(price) for name, price in prices}
        self._allowance = monthly_allowance
        self._pipeline_size = pipeline
        self._pipeline: Any = self._client.pipeline(transaction=False) if pipeline > 1 else None
        self._queued = 0
        self._month = _MonthCache()
        self._script(keys=["warm", "w", "w", "w", "w", "w", "w"], args=["t", "a", 0, 0, 0, 0])  # loads it
        self._client.flushdb()

    def close(self) -> None:
        """Send what is queued and disconnect."""
        self.flush()
        self._client.close()

    def flush(self) -> None:
        """Send the queued calls, if any."""
        if self._pipeline is not None and self._queued:
            self._pipeline.execute()
            self._queued = 0

    def update_addon_credit(self, user_id: str, amount: int) -> None:
        """Add purchased credit (µ¢) to a user."""
        self._client.hincrby(f"cr:{user_id}", "pm", amount)

    def _keys(self, user: str, app: str, month: str) -> list[str]:
        return [
            f"um:{user}:{month}",
            f"ut:{user}:{month}",
            f"am:{user}:{month}",
            f"at:{user}:{month}:{app}",
            f"gt:{month}",
            f"gm:{month}",
            f"cr:{user}",
        ]

    def increment_usage(self, actor: ActorLike, usage_type: str, amount: int) -> int | None:
        """Record ``amount`` units; the month total in µ¢ (None when pipelined)."""
        cost_micro, cost_frac = divmod(self._prices[usage_type] * amount, SCALE)
        app = actor.app_id or GLOBAL_APP
        keys = self._keys(actor.user_id, app, self._month.now())
        args = [usage_type, app, amount, cost_micro, cost_frac, self._allowance]
        if self._pipeline is None:
            micro, frac = self._script(keys=keys, args=args)
            return microcents_half_up(_split(int(micro), int(frac)))
        self._script(keys=keys, args=args, client=self._pipeline)
        self._queued += 1
        if self._queued >= self._pipeline_size:
            self._pipeline.execute()
            self._queued = 0
        return None

    def user_views(self, user_ids: list[str]) -> dict[str, UserView]:
        """``ReferenceMeter.user_view`` of every user in ``user_ids`` (read in pipelines)."""
        self.flush()
        month = self._month.now()
        views: dict[str, UserView] = {}
        for chunk in _chunks(user_ids, 500):
            pipe = self._client.pipeline(transaction=False)
            for user in chunk:
                pipe.hgetall(f"um:{user}:{month}")
                pipe.hgetall(f"ut:{user}:{month}")
                pipe.hgetall(f"am:{user}:{month}")
                pipe.hgetall(f"cr:{user}")
            replies = pipe.execute()
            hashes = {user: replies[4 * index : 4 * index + 4] for index, user in enumerate(chunk)}
            pipe = self._client.pipeline(transaction=False)
            wanted = [
                (user, field[:-2])
                for user in chunk
                for field in hashes[user][2]  # the user's app totals: "<app>|n" is one per app
                if field.endswith("|n")
            ]
            for user, app in wanted:
                pipe.hgetall(f"at:{user}:{month}:{app}")
            app_hashes: dict[str, dict[str, dict[str, str]]] = {user: {} for user in chunk}
            for (user, app), reply in zip(wanted, pipe.execute(), strict=True):
                app_hashes[user][app] = reply
            for user in chunk:
                month_hash, types_hash, apps_hash, credit_hash = hashes[user]
                views[user] = _redis_view(month_hash, types_hash, apps_hash, credit_hash, app_hashes[user])
        return views

    def global_usage(self) -> dict[str, Any]:
        """This month's aggregate, as ``get_global_usage``."""
        self.flush()
        month = self._month.now()
        totals = self._client.hgetall(f"gm:{month}")
        usage: dict[str, Any] = {"total": microcents_half_up(_pair(totals, "tm", "tf"))}
        usage.update(_typed_counters(self._client.hgetall(f"gt:{month}")))
        return usage


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _pair(fields: dict[str, str], micro: str, frac: str) -> int:
    return _split(int(fields.get(micro, 0)), int(fields.get(frac, 0)))


def _typed_counters(fields: dict[str, str]) -> dict[str, dict[str, int]]:
    """``{type: {"units", "cost", "count"}}`` from ``type|u``, ``type|m``, ``type|f``, ``type|n``."""
    names = {field.rsplit("|", 1)[0] for field in fields}
    return {
        name: {
            "units": int(fields.get(f"{name}|u", 0)),
            "cost": microcents_half_up(_pair(fields, f"{name}|m", f"{name}|f")),
            "count": int(fields[f"{name}|n"]),
        }
        for name in names
    }


def _redis_view(
    month_hash: dict[str, str],
    types_hash: dict[str, str],
    apps_hash: dict[str, str],
    credit_hash: dict[str, str],
    app_types: dict[str, dict[str, str]],
) -> UserView:
    usage: dict[str, Any] = {"total": microcents_half_up(_pair(month_hash, "tm", "tf"))}
    usage.update(_typed_counters(types_hash))
    apps = {
        name: {"total": microcents_half_up(_pair(apps_hash, f"{name}|m", f"{name}|f")), "count": int(count)}
        for name, count in ((field[:-2], value) for field, value in apps_hash.items() if field.endswith("|n"))
    }
    app_usage = {
        name: {"total": apps[name]["total"], **_typed_counters(fields)} for name, fields in app_types.items()
    }
    pools = (_pair(month_hash, "am", "af"), _pair(month_hash, "pm", "pf"), _pair(month_hash, "om", "of"))
    return UserView(
        usage=usage,
        apps=apps,
        app_usage=app_usage,
        pools_attocents=pools,
        consumed_attocents=_pair(credit_hash, "cm", "cf"),
    )


@contextlib.contextmanager
def scratch_directory() -> Iterator[Path]:
    """A new temporary directory (under ``TMPDIR``), removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="usagemeter-bench-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
