"""Moving tasks between stores: ``asynctask export``, ``import`` and ``migrate`` as functions.

Built on the transfer part of the transport contract (:mod:`asynctask.transports.transfer`).

* :func:`migrate_queue` moves a queue's waiting tasks (ready and delayed) and, when asked, its dead
  letters from one transport to another, in batches, keeping id, priority, remaining delay, attempts
  and meta.  At least once: a batch is taken from the source (reserved for ``lease_s``), stored in
  the target, and only then acked in the source.  A migrate killed at any instant loses nothing: the
  batch it held comes back in the source when its lease runs out (at once on AMQP), and a re-run
  moves it; a task the target holds already is not stored twice (where the target can tell).
  Tasks a worker holds are left alone and counted.
* :func:`export_records` yields a queue's waiting tasks or dead letters without changing anything;
  :func:`import_records` stores records, skipping ids the queue holds already.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from asynctask.errors import ConfigurationError
from asynctask.transports.base import Transport
from asynctask.transports.transfer import TaskRecord, UnsupportedOperationError

__all__ = [
    "DEFAULT_BATCH",
    "MoveOptions",
    "MoveSummary",
    "export_records",
    "import_records",
    "migrate_queue",
    "same_store",
]

logger = logging.getLogger(__name__)

#: tasks a round of take, put and ack moves
DEFAULT_BATCH = 1000
#: how long a migrate holds a batch in the source: after a kill, how long before a re-run sees it
DEFAULT_LEASE_S = 60.0

#: called with the number of tasks a step moved (a progress bar's ``update``)
Progress = Callable[[int], object]


@dataclass(frozen=True)
class MoveOptions:
    """How :func:`migrate_queue` and :func:`import_records` move tasks."""

    #: move (or store) dead letters too (import: store the records as dead letters)
    dead: bool = False
    #: count what would move, move nothing
    dry_run: bool = False
    batch: int = DEFAULT_BATCH
    lease_s: float = DEFAULT_LEASE_S
    progress: Progress | None = None


@dataclass
class MoveSummary:
    """What a migrate of one queue did (or, in a dry run, would do)."""

    queue: str
    #: waiting tasks stored in the target and removed from the source
    moved: int = 0
    #: waiting tasks removed from the source that the target held already (a re-run's)
    skipped: int = 0
    dead_moved: int = 0
    dead_skipped: int = 0
    #: dead letters copied but left in the source (a source that cannot remove them one by one)
    dead_left: int = 0
    #: tasks workers (or an interrupted migrate) held in the source: left there
    in_flight_left: int = 0
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def same_store(source: Transport, target: Transport) -> bool:
    """True when both open the same store: same kind and URL, or (two URLs for one store, such as
    ``filesys:/a`` and ``file:///a``) a claim made through one is seen through the other."""
    if type(source) is not type(target):
        return False
    if source.url.rstrip("/") == target.url.rstrip("/"):
        return True
    probe = f"asynctask.migrate.probe.{os.urandom(8).hex()}"
    return source.claim_once(probe, 60) and not target.claim_once(probe, 60)


def migrate_queue(
    source: Transport, target: Transport, queue: str, options: MoveOptions = MoveOptions()
) -> MoveSummary:
    """Move ``queue`` from ``source`` to ``target`` (same queue name); see the module docstring.

    Raises :class:`ConfigurationError` when both name the same store (a move there would remove
    every task), and the transports' errors (``UnsupportedOperationError`` naming what the source
    or target cannot do).
    """
    if same_store(source, target):
        raise ConfigurationError(f"--from and --to name the same store ({source!r}): nothing to migrate")
    summary = MoveSummary(queue, dry_run=options.dry_run)
    progress = options.progress
    if options.dry_run:
        stats = source.stats(queue)
        summary.moved = stats.ready + stats.delayed
        summary.dead_moved = stats.dead if options.dead else 0
        summary.in_flight_left = stats.in_flight
        return summary
    while True:
        taken = source.take_tasks(queue, options.batch, lease_s=options.lease_s)
        if not taken:
            break
        stored = target.put_tasks(queue, [record for record, _ in taken])
        source.ack_tasks([task for _, task in taken])
        summary.moved += sum(stored)
        summary.skipped += len(stored) - sum(stored)
        if progress is not None:
            progress(len(taken))
    if options.dead:
        _migrate_dead(source, target, summary, options)
    summary.in_flight_left = source.stats(queue).in_flight
    return summary


def _migrate_dead(source: Transport, target: Transport, summary: MoveSummary, options: MoveOptions) -> None:
    queue, progress = summary.queue, options.progress
    cursor = ""
    removable = True
    while True:
        # While the source removes what was copied, its first page is always the next one.
        page, cursor = source.dead_page(queue, after="" if removable else cursor, limit=options.batch)
        if not page:
            return
        stored = target.put_dead(queue, [TaskRecord.from_dead(each) for each in page])
        summary.dead_moved += sum(stored)
        summary.dead_skipped += len(stored) - sum(stored)
        if removable:
            try:
                source.purge_dead(queue, [each.id for each in page])
            except UnsupportedOperationError as exc:
                logger.warning("dead letters of %s stay in the source: %s", queue, exc)
                removable = False
        if not removable:
            summary.dead_left += len(page)
        if progress is not None:
            progress(len(page))
        if not removable and not cursor:
            return


def export_records(transport: Transport, queue: str, *, dead: bool = False, page: int = 1000) -> Iterator[TaskRecord]:
    """Every waiting task (or, with ``dead``, every dead letter) of ``queue``, page by page, unchanged."""
    cursor = ""
    while True:
        if dead:
            letters, cursor = transport.dead_page(queue, after=cursor, limit=page)
            yield from (TaskRecord.from_dead(each) for each in letters)
        else:
            records, cursor = transport.peek_tasks(queue, after=cursor, limit=page)
            yield from records
        if not cursor:
            return


def import_records(
    transport: Transport, queue: str, records: Iterable[TaskRecord], options: MoveOptions = MoveOptions()
) -> tuple[int, int]:
    """Store ``records`` in ``queue`` (as dead letters with ``options.dead``), ``options.batch`` a
    round trip: (stored, duplicates skipped)."""
    dead, batch, progress = options.dead, options.batch, options.progress
    stored = skipped = 0
    chunk: list[TaskRecord] = []

    def flush() -> None:
        nonlocal stored, skipped
        flags = transport.put_dead(queue, chunk) if dead else transport.put_tasks(queue, chunk)
        stored += sum(flags)
        skipped += len(flags) - sum(flags)
        if progress is not None:
            progress(len(chunk))
        chunk.clear()

    for record in records:
        chunk.append(record)
        if len(chunk) >= batch:
            flush()
    if chunk:
        flush()
    return stored, skipped
