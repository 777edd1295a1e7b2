"""Competing consumers and claimers for the contract suite, as functions and as a script.

Run as ``python contract_worker.py consume URL QUEUE START_AT`` (prints the id of every task it
acked, one per line) or ``python contract_worker.py claim URL PREFIX COUNT START_AT`` (prints every
key it won).  ``START_AT`` is a time.time() instant to wait for, so that competitors really compete.
The contract suite runs these in threads for transports that live in one process (memory).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from asynctask.transports import get_transport


def _wait_until(start_at: float) -> None:
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)


def consume(url: str, queue: str, start_at: float, emit: Callable[[str], None]) -> None:
    """Drain ``queue`` in batches, acking each batch; stop after two empty 1-second waits."""
    with get_transport(url) as transport:
        _wait_until(start_at)
        empty = 0
        while empty < 2:
            tasks = transport.get_tasks(queue, 25, timeout_s=1.0)
            if not tasks:
                empty += 1
                continue
            empty = 0
            transport.ack_tasks(tasks)
            for task in tasks:
                emit(task.id)


def claim(url: str, prefix: str, count: int, start_at: float, emit: Callable[[str], None]) -> None:
    """Try to claim ``count`` keys; emit each won."""
    with get_transport(url) as transport:
        _wait_until(start_at)
        for number in range(count):
            key = f"{prefix}:{number}"
            if transport.claim_once(key, 60):
                emit(key)


def main(argv: list[str]) -> None:
    def emit(text: str) -> None:
        print(text, flush=True)

    if argv[0] == "consume":
        consume(argv[1], argv[2], float(argv[3]), emit)
    elif argv[0] == "claim":
        claim(argv[1], argv[2], int(argv[3]), float(argv[4]), emit)
    else:
        raise SystemExit(f"unknown mode {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
