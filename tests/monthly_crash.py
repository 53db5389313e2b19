"""The child of ``test_monthly_charges.py::test_sigkill_during_monthly_and_keyed_charges``.

``python tests/monthly_crash.py STORE BACKEND EPOCH LOG CYCLE`` opens the service on STORE with a
clock standing at EPOCH and a seat-fee listener of ``metering:monthlyCharges``, then charges users
from 4 threads with idempotency keys, flushing now and then, until it is killed. Before each
call it appends ``I <key> <user>`` to LOG (one ``os.write``, so a line is whole or absent): the
parent retries every call it finds there after the restart, and checks that each key's charge
and each month's seat fee are then in the ledger exactly once.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from pathlib import Path

from usagemeter import (
    MONTHLY_CHARGES,
    Actor,
    CostMap,
    MeteringService,
    MonthlyCharge,
    MonthlyChargesEvent,
    Policy,
)

PRICES = CostMap.from_dict({"kv:write": 125})
USERS = [f"user-{n}" for n in range(8)]
APP = "chat"
SEAT = 5_000
THREADS = 4


def seat_fee(event: MonthlyChargesEvent) -> list[MonthlyCharge]:
    return [MonthlyCharge("seat_fee", SEAT, units=1)]


def open_service(store: Path, backend: str, epoch: float, interval: float = 0.02) -> MeteringService:
    """The service the child and the parent's checks open: same prices, plan, clock, listener."""
    service = MeteringService(
        PRICES,
        policies=[Policy("temp_free", 10**12)],
        store=store,
        store_backend=backend,  # type: ignore[arg-type]
        snapshot_interval=interval,
        clock=lambda: epoch,
    )
    service.events.on(MONTHLY_CHARGES, seat_fee)
    return service


def charge(service: MeteringService, key: str, user: str) -> int:
    return service.increment_usage(Actor(user, APP), "kv:write", 1, idempotency_key=key)


def main(store: str, backend: str, epoch: str, log_path: str, cycle: str) -> None:
    service = open_service(Path(store), backend, float(epoch))
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def work(thread: int) -> None:
        rng = random.Random(f"{cycle}-{thread}")
        seq = 0
        while True:
            key = f"c{cycle}-t{thread}-{seq}"
            user = rng.choice(USERS)
            os.write(log_fd, f"I {key} {user}\n".encode())
            charge(service, key, user)
            if rng.random() < 0.2:  # a retry of its own: must record nothing
                charge(service, key, user)
            seq += 1

    for thread in range(THREADS):
        threading.Thread(target=work, args=(thread,), daemon=True).start()
    print("ready", flush=True)
    while True:
        time.sleep(random.uniform(0.0, 0.05))
        service.flush()


if __name__ == "__main__":
    main(*sys.argv[1:6])
