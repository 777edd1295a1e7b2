"""Entry point for the benchmarks.

``python -m bench transport [URL] [--tasks N] [--backlog N[,N...]] [--drain N] [--runs N]``
    a transport's submit, batch submit and drain rates beside the bare client loop (the floor);
``python -m bench workers [URL] [--tasks N] [--runs N] [--samples N]``
    drain rate through ``asynctask-workers`` beside the consumer loop, and submit-to-start latency;
``python -m bench workers [URL] --sleep-ms MS --concurrency N [--async] [--tasks N] [--runs N]``
    I/O-bound tasks through one child with N lanes: drain rate beside the ideal N / sleep, and the
    resident memory of the worker child and tree (see :mod:`bench.io_bound`).
``python -m bench workers [URL] --results [--tasks-fn] [--tasks N] [--runs N]``
    no-op workers keeping results (``result_ttl_s``) beside the consumer loop doing the same storage
    work, and (``--tasks-fn``) no-op ``@task`` functions through the ``tasks`` worker beside the
    plain no-op worker (see :mod:`bench.results`).
``python -m bench migrate [--tasks N] [--runs N]``
    ``asynctask migrate`` of N tasks filesystem -> Redis -> PostgreSQL beside the bare take/put/ack
    loop, checking that every task arrived (see :mod:`bench.migrate`).
``python -m bench dashboard URL [--queues N] [--dead N] [--runs N]``
    the dashboard's API answer times on a Redis or PostgreSQL store of 1,000 queues and 100,000
    dead letters (see :mod:`bench.dashboard`).
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv and argv[0] == "migrate":
        from bench.migrate import main as migrate_main

        return migrate_main(argv[1:])
    if argv and argv[0] == "dashboard":
        from bench.dashboard import main as dashboard_main

        return dashboard_main(argv[1:])
    if argv and argv[0] == "workers":
        from bench.workers import main as workers_main

        return workers_main(argv[1:])
    from bench.transport import main as transport_main

    return transport_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
