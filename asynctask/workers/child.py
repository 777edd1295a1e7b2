"""The entry point of one worker child process (started by the supervisor's fork server or spawn).

The child imports the ``require`` modules, opens its own transport, runs ``setup()``, then the
:class:`~asynctask.workers.runner.Runner` loop, reporting to the supervisor over a Pipe with the
messages of :mod:`asynctask.workers.protocol`; ``teardown()`` runs at exit.  SIGTERM or SIGINT stop
fetching (the task in hand finishes, the rest is given back); the supervisor kills a child that
overstays.  A child whose supervisor disappears stops by itself.

Exit status: 0 after a stop, a halt or a recycle; 1 when ``setup()`` or the loop failed.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from asynctask.errors import TransportUnavailableError
from asynctask.logformat import JSON, TEXT, make_formatter
from asynctask.middleware import load_middleware
from asynctask.transports import attach_state_store, get_transport, quiet_drivers
from asynctask.transports.base import Transport
from asynctask.workers import protocol as P  # noqa: N812
from asynctask.workers.aio import WorkerLoop, make_runner
from asynctask.workers.base import AsyncTaskWorker, get_worker
from asynctask.workers.lanes import TIMED_OUT
from asynctask.workers.runner import (
    HALT_EMPTY,
    HALTED,
    MAX_MEMORY,
    MAX_TASKS,
    RECONNECT_FIRST_S,
    RECONNECT_MAX_S,
    Runner,
)

logger = logging.getLogger(__name__)

#: how a run ended -> the reason of the child's ``Recycle`` (its replacement starts before it leaves)
RECYCLES = {MAX_TASKS: "max_tasks_per_child", MAX_MEMORY: "max_memory_mb", TIMED_OUT: "timeout_s"}

LOG_FORMAT = "%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s"
#: the middleware that puts the task fields on log records: added to a child's when it logs JSON
LOGGING_CONTEXT = "asynctask.middleware.LoggingContext"

#: the ``--log-format`` that :func:`configure_logging` last set in this process: the default of
#: :attr:`ChildSpec.log_format`, so the children log as the supervisor that built their specs
_log_format = TEXT


def _current_log_format() -> str:
    return _log_format


@dataclass(frozen=True)
class ChildSpec:
    """Everything a child needs, picklable (it crosses the process boundary)."""

    queue: str
    worker: str
    transport_url: str
    require: tuple[str, ...] = ()
    poll_interval_s: float = 0.5
    halt_when_empty: bool = False
    rate_max_calls: int | None = None
    rate_period_s: float = 1.0
    max_tasks: int | None = None
    max_memory_mb: float | None = None
    #: tasks run at once (:mod:`asynctask.workers.lanes`), and how long the others get after a
    #: thread overran ``timeout_s``
    concurrency: int = 1
    shutdown_timeout_s: float = 30.0
    #: ``asynctask_state_store``: where results, status and cancel marks live (None: the transport)
    state_store_url: str | None = None
    #: ``asynctask_middleware``: dotted paths of the middleware classes
    middleware: tuple[str, ...] = ()
    #: send ``finished`` messages (the supervisor has metrics or listeners)
    report_outcomes: bool = False
    log_level: int = logging.INFO
    quiet: bool = False
    #: ``text`` or ``json`` (:mod:`asynctask.logformat`); by default what this process logs
    log_format: str = field(default_factory=_current_log_format)


def configure_logging(level: int, quiet: bool, log_format: str = TEXT) -> None:
    """Log to stderr with one format in the supervisor and every child; quiet silences everything.

    ``log_format`` is ``text`` (:data:`LOG_FORMAT`) or ``json`` (one object per line, Python's
    warnings too: :class:`~asynctask.logformat.JsonFormatter`); ValueError names another."""
    global _log_format  # the children's default (ChildSpec), set where the command starts
    formatter = make_formatter(log_format, LOG_FORMAT)
    _log_format = log_format
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    logging.captureWarnings(log_format == JSON)
    root.addHandler(handler)
    root.setLevel(logging.CRITICAL + 10 if quiet else level)
    quiet_drivers(level)


def _supervisor_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_parent(supervisor_pid: int, stop: threading.Event) -> None:
    """Stop when the supervisor is gone: this process is re-parented (its parent is the supervisor or
    the supervisor's fork server, which leaves with it) or the supervisor's pid no longer exists."""
    parent = os.getppid()
    while not stop.wait(1.0):
        if os.getppid() != parent or not _supervisor_alive(supervisor_pid):
            logger.warning("the supervisor (pid %d) is gone; stopping", supervisor_pid)
            stop.set()


def _open_transport(url: str, state_store_url: str | None, stop: threading.Event) -> Transport | None:
    delay = RECONNECT_FIRST_S
    logged = False
    while not stop.is_set():
        try:
            return attach_state_store(get_transport(url), state_store_url)
        except TransportUnavailableError as exc:
            if not logged:
                logger.error("transport unavailable: %s; retrying with backoff", exc)
                logged = True
        stop.wait(delay)
        delay = min(delay * 2, RECONNECT_MAX_S)
    return None


def _stop_on_signals(parent_pid: int) -> threading.Event:
    """An event set by SIGTERM, SIGINT or the supervisor's disappearance."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = sys.modules.get("asynctask.workers.forkserver")
    if server is not None and getattr(server, "terminated_pid", None) == os.getpid():
        stop.set()  # SIGTERM came between the fork and the line above
    threading.Thread(target=_watch_parent, args=(parent_pid, stop), name="asynctask-parent", daemon=True).start()
    return stop


class _Pipe:
    """The child's end of the supervisor's pipe (a closed pipe stops the child), and the shared
    memory where it writes the tasks in hand."""

    def __init__(self, conn: Connection, stop: threading.Event, current: P.CurrentTask | None) -> None:
        self.conn, self.stop, self.current = conn, stop, current

    def report(self, message: P.Message) -> None:
        try:
            self.conn.send(message)
        except OSError:
            self.stop.set()

    def inbox(self) -> list[object]:
        """The supervisor's crash notices received so far (AMQP only; see asynctask.workers.crashes)."""
        messages: list[object] = []
        try:
            while self.conn.poll():
                messages.append(self.conn.recv())
        except (OSError, EOFError):
            self.stop.set()
        return messages


def child_main(spec: ChildSpec, conn: Connection, parent_pid: int, current: P.CurrentTask | None = None) -> None:
    """Run one worker on one queue until stopped or halted; exits the process."""
    configure_logging(spec.log_level, spec.quiet, spec.log_format)
    stop = _stop_on_signals(parent_pid)
    pipe = _Pipe(conn, stop, current)
    for module in spec.require:
        importlib.import_module(module)
    worker = get_worker(spec.worker)()
    transport = _open_transport(spec.transport_url, spec.state_store_url, stop)
    if transport is None:
        sys.exit(0)
    # the worker's hooks, and before_submit for its requeue(): one chain per child
    transport.middleware = load_middleware(_middleware_paths(spec))
    started = time.monotonic()
    runner: Runner | None = None
    try:
        with WorkerLoop(worker) as loop:
            worker.bind(transport, spec.queue)
            try:
                loop.call(worker.setup)
            except Exception:
                logger.exception("setup() of worker %s failed on queue %s", spec.worker, spec.queue)
                loop.call(worker.teardown)
                sys.exit(1)
            logger.info("worker %s started on queue %s", spec.worker, spec.queue)
            pipe.report(P.Ready(os.getpid()))
            runner = _runner(spec, worker, transport, pipe, loop)
            if runner.middleware is not None:
                runner.middleware.on_worker_start(worker)
            _run(spec, runner, pipe, started, loop)
    finally:
        (runner.transport if runner is not None else transport).close()
        conn.close()
    sys.exit(0)


def _middleware_paths(spec: ChildSpec) -> tuple[str, ...]:
    """``asynctask_middleware``, with LoggingContext first when the child logs JSON (its lines carry
    the task fields; first, so that its ``after_process`` runs last)."""
    if spec.log_format == JSON and LOGGING_CONTEXT not in spec.middleware:
        return (LOGGING_CONTEXT, *spec.middleware)
    return spec.middleware


def _runner(spec: ChildSpec, worker: AsyncTaskWorker, transport: Transport, pipe: _Pipe, loop: WorkerLoop) -> Runner:
    return make_runner(
        transport,
        spec.queue,
        worker,
        loop,
        concurrency=spec.concurrency,
        shutdown_timeout_s=spec.shutdown_timeout_s,
        poll_interval_s=spec.poll_interval_s,
        halt=HALT_EMPTY if spec.halt_when_empty else None,
        rate_max_calls=spec.rate_max_calls,
        rate_period_s=spec.rate_period_s,
        max_tasks=spec.max_tasks,
        max_memory_mb=spec.max_memory_mb,
        report=pipe.report,
        report_outcomes=spec.report_outcomes,
        reopen=lambda: _reopened(spec, transport),
        current=pipe.current,
        middleware=transport.middleware,
        inbox=None if transport.portable_receipts else pipe.inbox,
        stop=pipe.stop,
    )


def _reopened(spec: ChildSpec, first: Transport) -> Transport:
    """A fresh transport after an outage, with the state store and the middleware of the first."""
    fresh = attach_state_store(get_transport(spec.transport_url), spec.state_store_url)
    fresh.middleware = first.middleware
    return fresh


def _run(spec: ChildSpec, runner: Runner, pipe: _Pipe, started: float, loop: WorkerLoop) -> None:
    """Run the loop, then ``teardown()``; say why it ended when the supervisor must know."""
    try:
        outcome = runner.run()
    finally:
        if runner.middleware is not None:
            runner.middleware.on_worker_stop(runner.worker)
        loop.call(runner.worker.teardown)
    logger.info(
        "worker %s on queue %s %s after %d task(s) in %.1f s",
        spec.worker,
        spec.queue,
        outcome,
        runner.processed,
        time.monotonic() - started,
    )
    if outcome == HALTED:
        pipe.report(P.Halted())
    elif outcome in RECYCLES:
        pipe.report(P.Recycle(RECYCLES[outcome]))
