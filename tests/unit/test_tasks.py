"""``@task`` functions, their handles, results, cancel and eager mode, on the memory transport.

The producer side opens its transport as ``get_transport()`` does: here ``$ASYNCTASK_TRANSPORT``
names a memory store of the test's own, and ``process_queue`` runs the built-in ``tasks`` worker
on it through the real runner.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asynctask import (
    PayloadError,
    ResultUnavailableError,
    TaskCancelledError,
    TaskFailedError,
    get_transport,
    task,
)
from asynctask.cli.workers import with_task_queues
from asynctask.config import Settings, WorkerEntry
from asynctask.errors import ConfigurationError
from asynctask.testing import process_queue
from asynctask.transports.memory import MemoryTransport
from asynctask.workers import AsyncTaskWorker
from asynctask.workers.plan import check_state_store

CALLS: list[Any] = []


@task(queue="unit_tasks", result_ttl_s=60)
def add(a: int, b: int = 0) -> int:
    CALLS.append(("add", a, b))
    return a + b


@task(queue="unit_tasks", max_attempts=2, retry_delay_s=0.0, result_ttl_s=60)
def explode(message: str) -> None:
    CALLS.append(("explode", message))
    raise KeyError(message)


@task(queue="unit_tasks", result_ttl_s=60)
def unjson() -> object:
    return {1, 2}


@task(queue="unit_plain", name="plain.noop")
def noop(n: int) -> None:
    CALLS.append(("noop", n))


@task(queue="unit_tasks", result_ttl_s=60)
async def slow_square(x: int) -> int:
    await asyncio.sleep(0.01)
    return x * x


@pytest.fixture(autouse=True)
def store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[MemoryTransport]:
    """A memory store of this test's own, named by $ASYNCTASK_TRANSPORT (no config file around)."""
    url = f"memory://{uuid.uuid4().hex}"
    monkeypatch.setenv("ASYNCTASK_TRANSPORT", url)
    monkeypatch.delenv("ASYNCTASK_EAGER", raising=False)
    monkeypatch.delenv("ASYNCTASK_STATE_STORE", raising=False)
    monkeypatch.delenv("ASYNCTASK_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    CALLS.clear()
    transport = MemoryTransport(url)
    yield transport
    transport.close()


def test_a_task_function_still_runs_when_called_and_is_named_after_its_module() -> None:
    assert add(2, b=3) == 5
    assert add.name == f"{__name__}.add"
    assert noop.name == "plain.noop"
    assert CALLS == [("add", 2, 3)]


def test_submit_stores_the_arguments_and_names_the_function_in_meta(store: MemoryTransport) -> None:
    handle = noop.submit(7)
    (stored,) = store.get_tasks("unit_plain", 10)
    assert stored.id == handle.id and stored.payload == {"args": [7], "kwargs": {}}
    assert stored.meta == {"fn": "plain.noop"}
    assert handle.status() == "unknown"  # keeps no results
    with pytest.raises(ResultUnavailableError):
        handle.result(timeout_s=1)


def test_a_non_json_argument_is_refused_naming_it_and_nothing_is_stored(store: MemoryTransport) -> None:
    with pytest.raises(PayloadError, match=r"add: argument 'b' is not JSON .*\{1, 2\}"):
        add.submit(1, b={1, 2})  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match=r"add: argument 0 is not JSON"):
        add.submit_with(args=(object(),))
    assert store.stats("unit_tasks").ready == 0


def test_result_status_and_wait_through_the_tasks_worker(store: MemoryTransport) -> None:
    handle = add.submit(2, 3)
    assert handle.status() == "queued"
    assert handle.wait(0.05) is False
    with pytest.raises(TimeoutError, match="still queued"):
        handle.result(timeout_s=0.05)
    assert process_queue("unit_tasks", "tasks", transport=store) == 1
    assert handle.status() == "done"
    assert handle.wait(0) is True
    assert handle.result(timeout_s=0) == 5
    record = handle.record()
    assert record is not None and record["attempts"] == 1 and record["finished_at"] > 0


def test_async_task_functions_run_through_the_tasks_worker(store: MemoryTransport) -> None:
    handles = [slow_square.submit(n) for n in range(5)]
    process_queue("unit_tasks", "tasks", transport=store)
    assert [h.result(timeout_s=0) for h in handles] == [0, 1, 4, 9, 16]


def test_a_failing_function_is_failed_then_dead_and_result_raises_its_error(store: MemoryTransport) -> None:
    handle = explode.submit("boom")
    process_queue("unit_tasks", "tasks", transport=store)
    assert handle.status() == "dead"
    assert CALLS == [("explode", "boom"), ("explode", "boom")]  # the function's max_attempts=2
    with pytest.raises(TaskFailedError, match=r"failed after 2 attempt\(s\): KeyError: 'boom'") as caught:
        handle.result(timeout_s=0)
    assert caught.value.error_type == "KeyError"
    (dead,) = store.dead_tasks("unit_tasks")
    assert dead.meta == {"fn": explode.name}


def test_a_return_value_that_is_not_json_fails_the_task_with_a_clear_reason(store: MemoryTransport) -> None:
    handle = unjson.submit()
    process_queue("unit_tasks", "tasks", transport=store)
    with pytest.raises(TaskFailedError, match=r"PayloadError: the return value of .*unjson is not JSON"):
        handle.result(timeout_s=0)


def test_cancel_before_it_starts_and_not_after(store: MemoryTransport) -> None:
    later = add.submit_with(args=(1,), delay_s=30)
    assert later.cancel() is True
    assert later.status() == "cancelled"
    with pytest.raises(TaskCancelledError):
        later.result(timeout_s=0)
    assert later.cancel() is False
    done = add.submit(1, 1)
    process_queue("unit_tasks", "tasks", transport=store)
    assert done.cancel() is False and done.status() == "done"
    assert store.stats("unit_tasks").delayed == 0
    assert [c for c in CALLS if c[0] == "add"] == [("add", 1, 1)]


def test_a_task_for_an_unregistered_function_is_dead_lettered_naming_it(store: MemoryTransport) -> None:
    store.submit_task("unit_tasks", {"args": [], "kwargs": {}}, meta={"fn": "gone.module.func"})
    process_queue("unit_tasks", "tasks", transport=store)
    (dead,) = store.dead_tasks("unit_tasks")
    assert "unknown task function 'gone.module.func'" in dead.reason
    assert f"{__name__}.add" in dead.reason  # the registered ones are listed


def test_records_expire_after_result_ttl_s(store: MemoryTransport) -> None:
    @task(queue="unit_expire", result_ttl_s=0.3)
    def quick() -> int:
        return 1

    handle = quick.submit()
    process_queue("unit_expire", "tasks", transport=store)
    assert handle.status() == "done"
    time.sleep(0.5)
    assert handle.status() == "unknown"
    assert store.state_keys("unit_expire") == []


def test_a_handle_for_any_id_reads_the_same_record(store: MemoryTransport) -> None:
    handle = add.submit(4, 4)
    process_queue("unit_tasks", "tasks", transport=store)
    assert get_transport().handle("unit_tasks", handle.id).result(timeout_s=0) == 8


# -- eager -----------------------------------------------------------------------------------------


def test_eager_mode_runs_at_submit_and_the_handle_holds_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCTASK_EAGER", "1")
    assert add.submit(2, 3).result(timeout_s=0) == 5
    handle = explode.submit("eager")
    assert handle.status() == "dead" and CALLS.count(("explode", "eager")) == 2  # retries at once
    assert noop.submit(1).result(timeout_s=0) is None  # kept even without result_ttl_s
    with pytest.raises(PayloadError, match="argument 0 is not JSON"):
        add.submit({1})  # type: ignore[arg-type]


class EagerRecorder(AsyncTaskWorker):
    name = "unit_eager_recorder"

    def process(self, payload: dict[str, Any]) -> None:
        CALLS.append(("recorder", payload))


def test_eager_get_transport_submit_runs_the_configured_worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "asynctask.yaml").write_text(
        f"asynctask_eager: true\nasynctask_require: [{__name__}]\n"
        "asynctask_workers: {unit_eager: unit_eager_recorder}\n"
    )
    monkeypatch.delenv("ASYNCTASK_TRANSPORT")
    transport = get_transport()
    transport.submit_task("unit_eager", {"x": 1})
    assert CALLS == [("recorder", {"x": 1})]
    with pytest.raises(ConfigurationError, match="no worker for queue 'unit_other'"):
        transport.submit_task("unit_other", {})


# -- configuration ---------------------------------------------------------------------------------


def test_asynctask_workers_without_entries_consumes_the_queues_of_the_required_functions() -> None:
    settings = with_task_queues(Settings(require=(__name__,)))
    queues = {entry.queue: entry.worker for entry in settings.workers}
    assert queues["unit_tasks"] == "tasks" and queues["unit_plain"] == "tasks"
    configured = Settings(workers=(WorkerEntry("jobs", "unit_eager_recorder"),), require=(__name__,))
    assert with_task_queues(configured) is configured


class NoState(MemoryTransport):
    keeps_state = False


def test_results_on_a_transport_without_state_need_a_state_store_at_start() -> None:
    settings = Settings(workers=(WorkerEntry("unit_tasks", "tasks"),), require=(__name__,))
    transport = NoState(f"memory://{uuid.uuid4().hex}")
    with pytest.raises(ConfigurationError, match=r"keeps results.*set asynctask_state_store"):
        check_state_store(settings, transport)
    transport.state_store = MemoryTransport(f"memory://{uuid.uuid4().hex}")
    check_state_store(settings, transport)
    check_state_store(Settings(workers=(WorkerEntry("unit_plain", "unit_eager_recorder"),)), NoState())
