"""``python -m bench dashboard URL``: how fast the dashboard's API answers on a big store.

Fills a key prefix (Redis) or a schema (PostgreSQL) of its own with ``--queues`` queues (one ready
task each) and ``--dead`` dead letters in one of them (the deepest case: its count and its later
pages), through the transport's bulk calls (``submit_tasks``; ``put_dead`` in chunks of 10,000,
or, where a transport cannot store dead letters directly, ``submit_tasks`` + ``get_tasks`` +
``dead``).  Then it starts ``asynctask dashboard`` on it (a process of its own, its sampler on) and
times each API endpoint over one kept-alive HTTP connection on loopback, ``--runs`` times each:
the median, the 95th percentile and the maximum, in milliseconds.

Endpoints: ``/api/queues`` (first page of 50, with the deep queue; and page 11), one queue's
counts, the first page of 50 dead letters and one 50,000 letters in (its cursor found by paging
with ``dead_page`` first), ``/api/history`` and ``/api/workers``; and, before, one sampler pass over
every queue (what the dashboard does every ``--sample-s`` seconds).  Everything the bench made is
removed at the end (the Redis keys of its prefix, the PostgreSQL schema).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from asynctask.message import encode_body, new_task_ids
from asynctask.transports import get_transport
from asynctask.transports.base import Transport, mask_url
from asynctask.transports.transfer import TaskRecord, UnsupportedOperationError
from bench.transport import machine

REASON = (
    "ValueError: the upstream answered 502\n"
    "Traceback (most recent call last):\n"
    '  File "/srv/app/asynctask/workers/runner.py", line 381, in _call\n'
    "    value = self.worker.process(task.payload)\n"
    '  File "/srv/app/myapp/workers.py", line 42, in process\n'
    "    response.raise_for_status()\n"
    '  File "/srv/app/.venv/lib/python3.11/site-packages/httpx/_models.py", line 761, in raise_for_status\n'
    "    raise HTTPStatusError(message, request=request, response=self)\n"
    "ValueError: the upstream answered 502\n"
)
CHUNK = 10_000


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="a redis:// or postgresql:// URL (the bench adds its own key_prefix / schema)")
    parser.add_argument("--queues", type=int, default=1000, help="queues (default 1000)")
    parser.add_argument("--dead", type=int, default=100_000, help="dead letters in one queue (default 100000)")
    parser.add_argument("--runs", type=int, default=50, help="requests per endpoint (default 50)")
    parser.add_argument(
        "--sample-s", type=float, default=5.0, help="the dashboard's --sample-s while timed (default 5, as it runs)"
    )
    args = parser.parse_args(argv)
    if min(args.queues, args.dead, args.runs) < 1:
        parser.error("--queues, --dead and --runs must be >= 1")
    return args


@contextmanager
def own_store(url: str) -> Iterator[str]:
    """``url`` with a key prefix or schema of the bench's own, removed afterwards."""
    tag = "benchdash" + uuid.uuid4().hex[:10]
    scheme = urlsplit(url).scheme
    joiner = "&" if "?" in url else "?"
    if scheme.startswith("redis"):
        mine = f"{url}{joiner}key_prefix={tag}"
    elif scheme.startswith("postgres"):
        mine = f"{url}{joiner}schema={tag}"
    else:
        raise SystemExit(f"python -m bench dashboard: a redis:// or postgresql:// URL is needed, not {mask_url(url)}")
    try:
        yield mine
    finally:
        _remove(mine, tag)


def _remove(url: str, tag: str) -> None:
    parts = urlsplit(url)
    if parts.scheme.startswith("redis"):
        import redis

        client = redis.Redis.from_url(parts._replace(query="").geturl())
        for pattern in (f"{{{tag}:*", f"{tag}:*"):
            batch = list(client.scan_iter(match=pattern, count=5000))
            for start in range(0, len(batch), 5000):
                client.delete(*batch[start : start + 5000])
        client.close()
    else:
        import psycopg2

        conn = psycopg2.connect(
            host=parts.hostname, port=parts.port or 5432, user=parts.username, dbname=parts.path.lstrip("/")
        )
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{tag}" CASCADE')
        conn.close()


def fill(transport: Transport, queues: list[str], dead: int, out: Callable[[str], Any]) -> None:
    started = time.perf_counter()
    for name in queues:
        transport.submit_tasks(name, [{"n": 0}])
    out(f"filled {len(queues)} queues in {time.perf_counter() - started:.1f}s")
    started = time.perf_counter()
    deep = queues[0]
    now = time.time()
    ids = new_task_ids(dead)
    try:
        for start in range(0, dead, CHUNK):
            records = [
                TaskRecord(
                    ids[i], encode_body({"n": i, "to": f"user{i}@example.org"}), 0, 1, now - 60, 0.0, REASON, now
                )
                for i in range(start, min(dead, start + CHUNK))
            ]
            transport.put_dead(deep, records)
        how = "put_dead"
    except UnsupportedOperationError:
        for start in range(0, dead, 1000):
            count = min(1000, dead - start)
            transport.submit_tasks(deep, [{"n": i} for i in range(start, start + count)])
            for task in transport.get_tasks(deep, count):
                transport.dead(task, REASON)
        how = "submit_tasks + get_tasks + dead"
    out(f"filled {dead} dead letters of {deep} in {time.perf_counter() - started:.1f}s ({how})")


def later_cursor(transport: Transport, queue: str, skip: int) -> str:
    """The cursor of the page that starts ``skip`` letters in (paging with ``dead_page``)."""
    cursor, seen = "", 0
    while seen < skip:
        try:
            page, cursor = transport.dead_page(queue, after=cursor, limit=min(500, skip - seen))
        except UnsupportedOperationError:
            return f"offset:{skip}"  # the dashboard's fallback cursor
        seen += len(page)
        if not cursor:
            break
    return cursor


@contextmanager
def serve(url: str, sample_s: float) -> Iterator[int]:
    """``asynctask dashboard`` on ``url`` in a process of its own (as users run it); yields its port."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    program = str(Path(sys.executable).parent / "asynctask")
    args = [program, "--transport", url, "dashboard", "--port", str(port), "--sample-s", str(sample_s)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the dashboard did not start: {process.stderr.read()!r:.500}") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(15)


def timed(conn: http.client.HTTPConnection, path: str, runs: int) -> tuple[float, float, float, int]:
    """Median, 95th percentile and maximum (ms) of ``runs`` GETs of ``path``, and the answer's size."""
    times = []
    size = 0
    for _ in range(runs):
        started = time.perf_counter()
        conn.request("GET", path)
        answer = conn.getresponse()
        body = answer.read()
        times.append((time.perf_counter() - started) * 1000)
        if answer.status != 200:
            raise SystemExit(f"GET {path}: HTTP {answer.status}: {body[:200]!r}")
        size = len(body)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))], times[-1], size


def main(argv: list[str], out: Callable[[str], Any] = print) -> int:
    args = parse_args(argv)
    from asynctask.dashboard.api import list_supervisors_or_none
    from asynctask.dashboard.sampler import Sampler

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out(f"asynctask bench dashboard {mask_url(args.url)}")
    out(f"date: {now}; machine: {machine()}")
    out(f"command: python -m bench dashboard {' '.join(mask_url(word) for word in argv)}")
    with own_store(args.url) as url:
        transport = get_transport(url)
        try:
            queues = [f"bench_q{n:04d}" for n in range(args.queues)]
            fill(transport, queues, args.dead, out)
            deep = queues[0]
            skip = min(50_000, args.dead // 2)
            cursor = later_cursor(transport, deep, skip)
            started = time.perf_counter()
            Sampler(transport, list_supervisors_or_none).sample_once()
            out(f"one sampler pass over {args.queues} queues: {(time.perf_counter() - started) * 1000:.0f} ms")
            with serve(url, args.sample_s) as port:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                endpoints = [
                    ("queues, page 1 of 50 (the deep queue on it)", "/api/queues?page=1"),
                    ("queues, page 11", f"/api/queues?page={min(11, (args.queues + 49) // 50)}"),
                    ("one queue's counts (the deep one)", f"/api/queues/{deep}"),
                    ("dead letters, first page of 50", f"/api/queues/{deep}/dead"),
                    (f"dead letters, page of 50 after {skip:,}", f"/api/queues/{deep}/dead?after={cursor}"),
                    ("history (chart)", "/api/history"),
                    ("workers (registry)", "/api/workers"),
                ]
                timed(conn, endpoints[0][1], 3)  # warm up: connections, prepared statements
                out(f"{'endpoint':<46}{'median ms':>10}{'p95 ms':>9}{'max ms':>9}{'bytes':>9}")
                for label, path in endpoints:
                    median, p95, worst, size = timed(conn, path, args.runs)
                    out(f"{label:<46}{median:>10.1f}{p95:>9.1f}{worst:>9.1f}{size:>9}")
                conn.close()
        finally:
            transport.close()
    return 0
