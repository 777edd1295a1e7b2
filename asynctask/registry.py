"""The worker registry: who is running, on every host, from the supervisors' heartbeats.

Every ``asynctask-workers`` supervisor runs a :class:`Heartbeat` in a thread of its own (started by
:mod:`asynctask.workers.extras`, with a transport of its own): every ``heartbeat_s`` seconds
(:data:`HEARTBEAT_S`, the setting ``asynctask_heartbeat_s``, ``$ASYNCTASK_HEARTBEAT_S`` or
``asynctask-workers --heartbeat-s``) it writes one JSON record through the transport's keyed state
(:mod:`asynctask.transports.state`; on AMQP, the state store) under ``(REGISTRY_QUEUE,
"supervisor.<host>.<pid>.<start ms>")`` with a TTL of :data:`TTL_FACTOR` heartbeats.

* A supervisor that stops cleanly deletes its record when it exits (while its children finish
  their tasks, the record says ``"state": "stopping"``); one that is killed stops writing and its
  record expires within ``TTL_FACTOR * heartbeat_s`` of its last write.
* A write that fails (server down) is logged (a warning the first time, then at debug level until
  one succeeds) and tried again at the next beat: an outage never stops the supervisor.
* On a transport that keeps no state (AMQP without ``asynctask_state_store``) nothing is recorded:
  one log line says so.

The record (:meth:`Heartbeat.record`), JSON-ready: ``id`` (the key), ``host``, ``pid``,
``started_at`` and ``heartbeat_at`` (epoch seconds), ``heartbeat_s``, ``ttl_s``, ``version``,
``transport`` (the URL with any password masked), ``queues``, ``state`` (``running`` or
``stopping``) and ``children``, one per child slot: ``queue``, ``worker``, ``slot``, ``pid`` (None
while it is restarted), ``alive``, ``concurrency``, ``started_at``, ``restarts``, ``done`` (tasks
acked), ``failed`` (attempts that failed: retried or dead-lettered), ``counts`` (every outcome of
:mod:`asynctask.workers.protocol`), ``running`` (``task_id``, ``started_at``, ``timeout_s`` of each
task in hand), ``last_fetch_at`` and ``rss_mb``.  Times are the writer's wall clock.

:func:`list_supervisors` reads them back (``asynctask workers``, the dashboard).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from asynctask.config_values import MAX_HEARTBEAT_S
from asynctask.message import validate_queue_name
from asynctask.transports import attach_state_store, get_transport
from asynctask.transports.urls import mask_url
from asynctask.workers import protocol as P  # noqa: N812

if TYPE_CHECKING:
    from asynctask.transports.base import Transport
    from asynctask.transports.state import KeyedState
    from asynctask.workers.state import ChildState

__all__ = [
    "HEARTBEAT_S",
    "KEY_PREFIX",
    "REGISTRY_QUEUE",
    "TTL_FACTOR",
    "Heartbeat",
    "list_supervisors",
    "masked_url",
    "supervisor_key",
]

logger = logging.getLogger(__name__)

#: the keyed-state queue the records live in
REGISTRY_QUEUE = validate_queue_name("asynctask_registry")
#: the keys of the supervisors' records start with this
KEY_PREFIX = "supervisor."
#: seconds between two heartbeats of a supervisor, unless configured
HEARTBEAT_S = 5.0
#: a record lives this many heartbeats after it was written
TTL_FACTOR = 2.5
#: how long a stopping supervisor waits for its last write (the delete) before it exits anyway
STOP_JOIN_S = 5.0
#: query options of a URL whose values are never shown (libpq ``password=``, ``sslpassword=``...)
_SECRET_OPTION = re.compile(r"pass|secret|token", re.IGNORECASE)
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def masked_url(url: str) -> str:
    """``url`` with the password of its user and the values of secret-looking options masked."""
    shown = mask_url(url)
    try:
        parts = urlsplit(shown)
    except ValueError:
        return "<unparsable url>"
    if not parts.query:
        return shown
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(_SECRET_OPTION.search(name) for name, _ in pairs):
        return shown
    query = urlencode([(name, "***" if _SECRET_OPTION.search(name) else value) for name, value in pairs], safe="*")
    return urlunsplit(parts._replace(query=query))


def supervisor_key(host: str, pid: int, started_at: float) -> str:
    """``supervisor.<host>.<pid>.<start ms>``: the host reduced to the characters a state key allows."""
    safe_host = _KEY_UNSAFE.sub("-", host).strip("-.") or "host"
    tail = f".{pid}.{int(started_at * 1000)}"
    return KEY_PREFIX + safe_host[: 200 - len(KEY_PREFIX) - len(tail)] + tail


def _version() -> str:
    import asynctask  # noqa: PLC0415 - the package imports the workers, which import this module

    return str(asynctask.__version__)


def _child_record(child: ChildState, now: float, monotonic_now: float) -> dict[str, Any]:
    """What the registry shows of one child.  Called on the heartbeat thread while the supervisor's
    thread updates ``child``: reads single attributes only (each read is atomic), the running tasks
    from the child's shared memory."""
    counts = {outcome: count for outcome, count in dict(child.counts).items() if count}
    alive = child.process is not None
    started = child.started_at
    return {
        "queue": child.queue,
        "worker": child.worker,
        "slot": child.slot,
        "pid": child.pid if alive else None,
        "alive": alive,
        "concurrency": child.concurrency,
        "started_at": round(now - (monotonic_now - started), 3) if alive and started else None,
        "restarts": child.restarts,
        "done": counts.get(P.ACKED, 0),
        "failed": counts.get(P.RETRIED, 0) + counts.get(P.DEAD, 0),
        "counts": counts,
        "running": [
            {"task_id": task.task_id, "started_at": task.at, "timeout_s": task.timeout_s}
            for task in (child.running_tasks() if alive else [])
        ],
        "last_fetch_at": child.last_fetch_at,
        "rss_mb": child.rss_mb,
    }


class Heartbeat:
    """One supervisor's record in the registry, and the thread that keeps it fresh.

    ``children`` returns the supervisor's :class:`~asynctask.workers.state.ChildState` list (read on
    the heartbeat thread: see :func:`_child_record`).  The thread writes through a transport of its
    own: ``transport_url`` with ``state_store_url`` attached.
    """

    def __init__(
        self,
        transport_url: str,
        children: Callable[[], Sequence[ChildState]],
        queues: Iterable[str],
        heartbeat_s: float = HEARTBEAT_S,
        state_store_url: str | None = None,
    ) -> None:
        if (
            isinstance(heartbeat_s, bool)
            or not isinstance(heartbeat_s, (int, float))
            or not 0 < heartbeat_s <= MAX_HEARTBEAT_S
        ):
            raise ValueError(
                f"heartbeat_s={heartbeat_s!r}: a number of seconds > 0 and <= {MAX_HEARTBEAT_S} is allowed"
            )
        self.transport_url = transport_url
        self.children = children
        self.queues = sorted(set(queues))
        self.heartbeat_s = float(heartbeat_s)
        self.ttl_s = self.heartbeat_s * TTL_FACTOR
        self.state_store_url = state_store_url
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = time.time()
        self.key = supervisor_key(self.host, self.pid, self.started_at)
        self._ended = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def record(self, stopping: bool = False) -> dict[str, Any]:
        """The record as written now (JSON-ready)."""
        now, monotonic_now = time.time(), time.monotonic()
        return {
            "id": self.key,
            "host": self.host,
            "pid": self.pid,
            "started_at": round(self.started_at, 3),
            "heartbeat_at": round(now, 3),
            "heartbeat_s": self.heartbeat_s,
            "ttl_s": self.ttl_s,
            "version": _version(),
            "transport": masked_url(self.transport_url),
            "queues": self.queues,
            "state": "stopping" if stopping else "running",
            "children": [_child_record(child, now, monotonic_now) for child in self.children()],
        }

    def beat(self, transport: KeyedState, stopping: bool = False) -> None:
        """Write the record now, for :attr:`ttl_s` seconds."""
        transport.state_put(REGISTRY_QUEUE, self.key, json.dumps(self.record(stopping)), self.ttl_s)

    def remove(self, transport: KeyedState) -> None:
        """Delete the record."""
        transport.state_delete(REGISTRY_QUEUE, self.key)

    # -- the thread ----------------------------------------------------------------------------

    def start(self, stop: threading.Event) -> None:
        """Run :meth:`run` in a daemon thread (a supervisor's ``starter``)."""
        self._thread = threading.Thread(target=self.run, args=(stop,), name="asynctask-registry", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        """The supervisor exits: the thread deletes the record; wait up to :data:`STOP_JOIN_S` for it."""
        self._ended.set()
        if self._thread is not None:
            self._thread.join(STOP_JOIN_S)

    def run(self, stop: threading.Event) -> None:
        """Beat every :attr:`heartbeat_s` until :meth:`finish` (``stopping`` once ``stop`` is set),
        then delete the record.  Failures are logged and tried again at the next beat."""
        transport: Transport | None = None
        try:
            while not self._ended.is_set():
                transport = self._attempt(transport, lambda t: self.beat(t, stop.is_set()), "writing")
                if transport is not None and not transport.keeps_state and transport.state_store is None:
                    logger.info(
                        "%s keeps no state: no worker registry (set asynctask_state_store to record this"
                        " supervisor for 'asynctask workers')",
                        type(transport).__name__,
                    )
                    return
                (self._ended if stop.is_set() else stop).wait(self.heartbeat_s)
            transport = self._attempt(transport, self.remove, "removing")
        finally:
            if transport is not None:
                transport.close()

    def _attempt(self, transport: Transport | None, call: Callable[[Transport], None], what: str) -> Transport | None:
        """``call(transport)``, opening the transport first when needed; the transport to use next
        (None after a failure: it is opened again next time)."""
        try:
            if transport is None:
                transport = attach_state_store(get_transport(self.transport_url), self.state_store_url)
            if not transport.keeps_state and transport.state_store is None:
                return transport
            call(transport)
        except Exception as exc:  # nothing may stop the heartbeat: tried again next beat
            level = logging.DEBUG if self._failing else logging.WARNING
            logger.log(level, "worker registry: %s this supervisor's record failed: %s", what, exc)
            self._failing = True
            if transport is not None:
                try:
                    transport.close()
                except Exception:
                    logger.debug("closing the registry's transport failed", exc_info=True)
            return None
        if self._failing:
            logger.info("worker registry: %s this supervisor's record works again", what)
            self._failing = False
        return transport


def list_supervisors(transport: KeyedState) -> list[dict[str, Any]]:
    """The live records of every supervisor (see the module docstring), sorted by host then pid.

    Expired records are never returned (the store does not return them); a record that is not a
    JSON object with a ``host`` and an integer ``pid`` is skipped with a debug log line.  Raises
    what the keyed state raises: :class:`~asynctask.errors.ConfigurationError` on a transport that
    keeps no state and has no state store (AMQP), a ``TransportError`` when the server fails.
    """
    keys = transport.state_keys(REGISTRY_QUEUE, KEY_PREFIX)
    found = []
    for key, text in zip(keys, transport.state_get_many(REGISTRY_QUEUE, keys) if keys else [], strict=True):
        if text is None:  # expired or deleted since it was listed
            continue
        try:
            record = json.loads(text)
        except ValueError as exc:
            logger.debug("worker registry: record %s is not JSON (%s): skipped", key, exc)
            continue
        if not isinstance(record, dict) or not isinstance(record.get("host"), str) or not _is_int(record.get("pid")):
            logger.debug("worker registry: record %s has no host or pid: skipped", key)
            continue
        record.setdefault("id", key)
        found.append(record)
    found.sort(key=lambda record: (record["host"], record["pid"]))
    return found


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
