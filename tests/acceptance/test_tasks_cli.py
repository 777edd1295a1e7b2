"""``@task`` functions end to end, on every transport with a store other processes reach:
asynctask-workers as a subprocess (``--require tasks_fixture`` and no ``asynctask_workers`` setting,
so it consumes the queues of the fixture's ``@task`` functions on its own), and this process as the
producer, opening its transport as ``get_transport()`` does with no URL (``$ASYNCTASK_TRANSPORT``).

RabbitMQ keeps no records itself: it runs twice, with a Redis state store (a key prefix of the
test's own, given to the workers by ``$ASYNCTASK_STATE_STORE``) and with a filesystem one (in the
test's directory, given by the config file's ``asynctask_state_store``).

One worker process per world serves every test of that world (the tests use tasks of their own).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import tasks_fixture
import yaml
from support import REDIS_HOST, REDIS_PORT, require_service
from tasks_fixture import EXPIRE_QUEUE, QUEUE, add, expiring, explode, finish_time, touch
from workers_support import CLI, FAST, Env, stop, transport_world, wait_for

from asynctask import TaskCancelledError, TaskFailedError
from asynctask.producer import producer_transport
from asynctask.results import TaskHandle

#: transport, or transport+state store
WORLDS = ("filesystem", "redis", "pgsql", "amqp+redis", "amqp+filesystem")
#: the Redis database of the AMQP worlds' Redis state store (a key prefix of each world's own)
STATE_DB = 9


@dataclass
class World:
    name: str
    env: Env
    #: the URL of the store that keeps the records (the transport's, or the state store's)
    records_url: str
    log: Path
    process: subprocess.Popen[bytes]

    def output(self) -> str:
        """The workers' output so far (the end of it), for assertion messages."""
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]


def delete_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=STATE_DB)
    try:
        keys = [key for pattern in (f"{{{prefix}:*", f"{prefix}:*") for key in client.scan_iter(match=pattern)]
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="module", params=WORLDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    name: str = request.param
    tmp = tmp_path_factory.mktemp(name.replace("+", "_"))
    kind, _, state_kind = name.partition("+")
    with contextlib.ExitStack() as stack:
        env = stack.enter_context(transport_world(kind, tmp))
        settings: dict[str, object] = {"asynctask_transport": env.url, **FAST}
        env.env.pop("ASYNCTASK_STATE_STORE", None)
        env.env.pop("ASYNCTASK_EAGER", None)
        state_url = None
        if state_kind == "redis":  # to the workers through the environment
            require_service("redis", REDIS_HOST, REDIS_PORT)
            prefix = "attasks" + uuid.uuid4().hex[:12]
            state_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{STATE_DB}?key_prefix={prefix}"
            stack.callback(delete_redis_prefix, prefix)
            env.env["ASYNCTASK_STATE_STORE"] = state_url
        elif state_kind == "filesystem":  # through the config file
            state_url = f"filesys:{tmp / 'state_store'}"
            settings["asynctask_state_store"] = state_url
        config = tmp / "asynctask.yaml"
        config.write_text(yaml.safe_dump(settings))
        assert "asynctask_workers" not in settings  # the queues come from the @task functions

        # the producer: this process, as get_transport() opens it (no config file where it runs)
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setenv("ASYNCTASK_TRANSPORT", env.url)
        if state_url:
            patch.setenv("ASYNCTASK_STATE_STORE", state_url)
        else:
            patch.delenv("ASYNCTASK_STATE_STORE", raising=False)
        for variable in ("ASYNCTASK_EAGER", "ASYNCTASK_CONFIG"):
            patch.delenv(variable, raising=False)
        (tmp / "producer").mkdir()
        patch.chdir(tmp / "producer")
        stack.callback(lambda: producer_transport().close())  # before the harness drops the store

        log = tmp / "workers.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [CLI, "--config", str(config), "--require", "tasks_fixture"],
                env=env.env,
                cwd=tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        stack.callback(stop, process)
        made = World(name, env, state_url or env.url, log, process)
        try:
            assert add.submit(0, 0).result(timeout_s=60) == 0  # the workers are up
        except BaseException:
            stop(process)
            print(made.output())
            raise
        yield made


def test_add_submit_result_on_the_queues_the_workers_found_themselves(world: World) -> None:
    started = time.monotonic()
    handle = add.submit(2, 3)
    assert handle.result(timeout_s=10) == 5, world.output()
    assert handle.status() == "done"
    print(f"{world.name}: add(2, 3) = 5 in {time.monotonic() - started:.3f} s")
    # no asynctask_workers setting: one child per queue of the @task functions, both running
    assert expiring.submit("x").result(timeout_s=10) == "x"
    log = world.output()
    for queue in (QUEUE, EXPIRE_QUEUE):
        assert f"started worker tasks on queue {queue} (pid" in log, log
    assert world.process.poll() is None, world.output()


def test_a_function_that_raises_is_failed_while_it_retries_then_dead(world: World) -> None:
    handle = explode.submit("kaboom")
    seen: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = handle.status()
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "dead":
            break
        time.sleep(0.02)
    # failed for ~EXPLODE_RETRY_S between the two attempts (max_attempts=2): seen by 20 ms polls
    assert "failed" in seen and seen[-1] == "dead", (seen, world.output())
    assert seen.index("failed") < seen.index("dead")
    with pytest.raises(TaskFailedError, match=r"failed after 2 attempt\(s\): ValueError: kaboom") as caught:
        handle.result(timeout_s=0)
    assert (caught.value.error_type, caught.value.error_message) == ("ValueError", "kaboom")
    # the runner writes the record before it moves the task to the dead letters: allow the moment
    dead = wait_for(
        lambda: [d for d in world.env.transport.dead_tasks(QUEUE) if d.id == handle.id],
        timeout=5,
        what="the task of explode in the dead letters",
    )
    assert len(dead) == 1 and dead[0].meta == {"fn": explode.name}
    assert "ValueError: kaboom" in dead[0].reason


def test_cancel_of_a_delayed_task_means_it_never_runs_and_of_a_finished_one_is_false(world: World) -> None:
    marker = world.env.tmp / f"touched-{uuid.uuid4().hex}"
    later = touch.submit_with(args=(str(marker),), delay_s=1.0)
    assert later.cancel() is True
    assert later.status() == "cancelled"
    # a task submitted after it with the same delay: once it ran, the cancelled one's time had come
    sentinel = touch.submit_with(args=(str(marker) + ".sentinel",), delay_s=1.0)
    assert sentinel.result(timeout_s=15) == str(marker) + ".sentinel", world.output()
    time.sleep(0.5)  # the workers poll every 50 ms: a run of the cancelled task would show by now
    assert not marker.exists(), "the cancelled task ran"
    assert later.status() == "cancelled"
    with pytest.raises(TaskCancelledError):
        later.result(timeout_s=0)
    assert later.cancel() is False  # cancelled already
    assert all(d.id != later.id for d in world.env.transport.dead_tasks(QUEUE))

    finished = add.submit(1, 1)
    assert finished.result(timeout_s=10) == 2
    assert finished.cancel() is False
    assert finished.status() == "done" and finished.result(timeout_s=0) == 2


def test_wait_returns_within_200_ms_of_completion(world: World) -> None:
    lags = []
    for _ in range(5):
        handle = finish_time.submit(0.3)  # waiting starts well before it finishes
        assert handle.wait(timeout_s=10) is True, world.output()
        returned = time.time()
        finished = handle.result(timeout_s=0)
        lags.append(returned - finished)
    print(f"{world.name}: wait returned {', '.join(f'{lag * 1000:.0f}' for lag in lags)} ms after the task finished")
    assert all(lag > 0 for lag in lags)  # same machine, same clock
    assert statistics.median(lags) < 0.2, lags


def test_a_task_for_a_function_the_children_do_not_have_is_dead_lettered_naming_it(world: World) -> None:
    task_id = world.env.transport.submit_task(QUEUE, {"args": [], "kwargs": {}}, meta={"fn": "nowhere.fn"})
    dead = wait_for(
        lambda: [d for d in world.env.transport.dead_tasks(QUEUE) if d.id == task_id],
        timeout=15,
        what="the task of nowhere.fn in the dead letters",
    )
    assert len(dead) == 1 and dead[0].meta == {"fn": "nowhere.fn"}
    assert "unknown task function 'nowhere.fn'" in dead[0].reason, dead[0].reason
    assert add.name in dead[0].reason  # the registered ones are listed
    assert dead[0].payload == {"args": [], "kwargs": {}}


def test_results_expire_after_result_ttl_s_and_the_store_keeps_nothing_of_them(world: World) -> None:
    assert tasks_fixture.expiring.options.result_ttl_s == 1
    handle = expiring.submit("soon gone")
    assert handle.result(timeout_s=10) == "soon gone", world.output()
    assert handle.status() == "done"
    time.sleep(2.0)
    assert handle.status() == "unknown"
    transport = producer_transport()
    transport.state_sweep()  # as the supervisor does every minute (a no-op where the server expires)
    assert transport.state_keys(EXPIRE_QUEUE) == []
    assert leftovers(world.records_url, handle) == []


def leftovers(url: str, handle: TaskHandle) -> list[str]:
    """What the store at ``url`` holds that names the task: keys, rows or files (names or contents)."""
    scheme = url.split(":", 1)[0]
    if scheme == "filesys":
        root = Path(url.removeprefix("filesys:"))
        found = []
        for directory, _dirs, files in os.walk(root):
            for name in files:
                path = Path(directory, name)
                with contextlib.suppress(FileNotFoundError):
                    if handle.id in name or handle.id.encode() in path.read_bytes():
                        found.append(str(path.relative_to(root)))
        return found
    if scheme == "redis":
        import redis

        parts = urlsplit(url)
        client = redis.Redis(host=parts.hostname, port=parts.port or 6379, db=int(parts.path.strip("/") or 0))
        try:
            return [key.decode() for key in client.scan_iter(match=f"*{handle.id}*", count=1000)]
        finally:
            client.close()
    if scheme in ("postgresql", "postgres"):
        import psycopg2

        schema = parse_qs(urlsplit(url).query)["schema"][0]
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f'SELECT queue, key FROM "{schema}".state WHERE strpos(key, %s) > 0 OR strpos(value, %s) > 0',
                    (handle.id, handle.id),
                )
                return [f"{queue}/{key}" for queue, key in cur.fetchall()]
        finally:
            conn.close()
    raise AssertionError(f"no raw check for {url}")
