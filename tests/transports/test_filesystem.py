"""Filesystem transport beyond the contract: processes at once, SIGKILL, modes, fsync, cost, URLs.

Run as a script (``python test_filesystem.py produce|consume|churn URL QUEUE ...``) it is the child
process of the multi-process tests.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import types
from collections import Counter
from pathlib import Path

import pytest

from asynctask.errors import TransportURLError
from asynctask.message import QueueStats, decode_payload
from asynctask.transports import filesystem as fs
from asynctask.transports import filesystem_admin, filesystem_state, get_transport
from asynctask.transports.filesystem import FilesystemTransport

QUEUE = "jobs"


# -- children ---------------------------------------------------------------------------------------


def _wait_until(start_at: float) -> None:
    time.sleep(max(start_at - time.time(), 0))


def produce(url: str, queue: str, count: int, start_at: float) -> None:
    """Submit ``count`` tasks in small batches, printing each id once its submit returned."""
    with get_transport(url) as transport:
        _wait_until(start_at)
        for start in range(0, count, 10):
            for task_id in transport.submit_tasks(queue, [{"n": n} for n in range(start, min(start + 10, count))]):
                print(task_id, flush=True)


def consume(url: str, queue: str, start_at: float) -> None:
    """Print ``D id`` for every delivery and ``A id`` after each ack; stop after two empty waits."""
    with get_transport(url) as transport:
        _wait_until(start_at)
        empty = 0
        while empty < 2:
            tasks = transport.get_tasks(queue, 20, timeout_s=1.5, lease_s=60)
            empty = 0 if tasks else empty + 1
            print("\n".join(f"D {task.id}" for task in tasks), flush=True)
            transport.ack_tasks(tasks)
            print("\n".join(f"A {task.id}" for task in tasks), flush=True)


def churn(url: str, queue: str) -> None:
    """Submit and ack forever (until killed), logging S (stored), P (about to ack) and A (acked) ids."""
    with get_transport(url) as transport:
        print("ready", flush=True)
        n = 0
        while True:
            ids = transport.submit_tasks(queue, [{"n": n + i, "pad": "x" * 2000} for i in range(20)])
            n += 20
            print("\n".join(f"S {i}" for i in ids), flush=True)
            tasks = transport.get_tasks(queue, 15, lease_s=0.3)
            print("\n".join(f"P {t.id}" for t in tasks), flush=True)
            transport.ack_tasks(tasks)
            print("\n".join(f"A {t.id}" for t in tasks), flush=True)


def add(url: str, queue: str, count: int, start_at: float) -> None:
    """state_add keys k.0 .. k.<count-1> with this process's id, printing ``<n> <pid>`` for each add won."""
    with get_transport(url) as transport:
        _wait_until(start_at)
        for n in range(count):
            if transport.state_add(queue, f"k.{n}", str(os.getpid()), 60):
                print(n, os.getpid(), flush=True)


def _child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)


# -- several processes at once ----------------------------------------------------------------------


def test_processes_submit_and_consume_at_once_without_loss_or_double_delivery(tmp_path: Path) -> None:
    url = f"filesys:{tmp_path}"
    start_at = str(time.time() + 2.0)
    producers = [_child("produce", url, QUEUE, "1200", start_at) for _ in range(2)]
    consumers = [_child("consume", url, QUEUE, start_at) for _ in range(3)]
    submitted = [line for p in producers for line in p.communicate(timeout=120)[0].split()]
    lines = [line for c in consumers for line in c.communicate(timeout=120)[0].splitlines() if line]
    assert [p.returncode for p in producers + consumers] == [0] * 5
    delivered = Counter(line[2:] for line in lines if line.startswith("D "))
    acked = Counter(line[2:] for line in lines if line.startswith("A "))
    assert len(submitted) == 2400
    assert set(delivered) == set(submitted) == set(acked)
    assert max(delivered.values()) == 1  # leases of 60 s held: nobody got a task twice
    with FilesystemTransport(url) as transport:
        assert transport.stats(QUEUE) == QueueStats()


def _task_files(root: Path) -> list[Path]:
    queue = root / "queues" / QUEUE
    return [
        *queue.glob("ready/*/*/*"),
        *(queue / "delayed").iterdir(),
        *(queue / "inflight").iterdir(),
    ]


def test_sigkill_at_random_instants_leaves_no_half_task_and_loses_nothing_acked(tmp_path: Path) -> None:
    url = f"filesys:{tmp_path}?fsync=0"
    stored: set[str] = set()
    pending: set[str] = set()
    acked: set[str] = set()
    rng = random.Random(2)
    for _ in range(12):
        child = _child("churn", url, QUEUE)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.01, 0.25))
        child.send_signal(signal.SIGKILL)
        out = child.stdout.read()  # not communicate(): it would skip what readline() buffered
        child.wait(timeout=30)
        for line in out.splitlines():
            kind, _, task_id = line.partition(" ")
            {"S": stored, "P": pending, "A": acked}[kind].add(task_id)
        for path in _task_files(tmp_path):  # every visible task file is whole
            decode_payload(path.read_bytes().decode("utf-8"))
    assert len(stored) > 100 and acked
    with FilesystemTransport(url) as transport:
        left: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tasks = transport.get_tasks(QUEUE, 100, timeout_s=1.0)  # killed children's leases end
            if not tasks and transport.stats(QUEUE).in_flight == 0:
                break
            left += [t.id for t in tasks]
            transport.ack_tasks(tasks)
        assert transport.dead_tasks(QUEUE) == []
        assert transport.stats(QUEUE) == QueueStats()
    assert not acked & set(left)  # an ack, once returned, stays
    assert stored <= set(left) | pending  # every stored task is still there, unless it was being acked
    assert len(left) == len(set(left))


# -- modes, fsync ---------------------------------------------------------------------------------


def _modes(root: Path) -> tuple[set[int], set[int]]:
    files, dirs = set(), set()
    for path in root.rglob("*"):
        (dirs if path.is_dir() else files).add(path.stat().st_mode & 0o777)
    return files, dirs


def test_modes_are_owner_only_by_default(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with FilesystemTransport(f"filesys:{root}") as transport:
        transport.submit_task(QUEUE, {"x": 1})
        transport.submit_task(QUEUE, {"x": 2}, delay_s=60)
        transport.claim_once("key", 60)
        task = transport.get_task(QUEUE)
        assert task is not None
        transport.dead(task, "to have a dead letter")
        assert _modes(root) == ({0o600}, {0o700})


def test_mode_option_sets_file_and_directory_modes_whatever_the_umask(tmp_path: Path) -> None:
    root = tmp_path / "store"
    old = os.umask(0o077)
    try:
        with FilesystemTransport(f"filesys:{root}?mode=0o660") as transport:
            transport.submit_tasks(QUEUE, [{"x": 1}, {"x": 2}])
            transport.claim_once("key", 60)
            task = transport.get_task(QUEUE)
            assert task is not None
            transport.dead(task, "dead")
    finally:
        os.umask(old)
    files, dirs = _modes(root)
    assert files - {0o600} == {0o660}  # the claims file keeps os.open's mode minus the umask
    assert dirs == {0o770}
    assert FilesystemTransport(f"filesys:{tmp_path}/b?mode=640").file_mode == 0o640


def test_fsync_option_syncs_files_and_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    with FilesystemTransport(f"filesys:{tmp_path}?fsync=1") as transport:
        transport.submit_tasks(QUEUE, [{"n": n} for n in range(10)])
        after_submit = len(synced)
        assert after_submit >= 11  # each file, then its directory
        tasks = transport.get_tasks(QUEUE, 10)
        transport.ack_tasks(tasks[:8])
        transport.nack(tasks[8])
        transport.dead(tasks[9], "reason")
        assert transport.claim_once("k", 10) is True
        assert len(synced) >= after_submit + 4
        stats = transport.stats(QUEUE)
        assert (stats.ready, stats.in_flight, stats.dead) == (1, 0, 1)
    with FilesystemTransport(f"filesys:{tmp_path}?fsync=0") as transport:
        before = len(synced)
        transport.submit_task(QUEUE, {})
        assert len(synced) == before


# -- cost independent of the backlog ---------------------------------------------------------------


def _drain_counting(tmp_path: Path, backlog: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    counts = Counter[str]()
    real_listdir = fs.listdir

    def counting_listdir(path: str) -> list[str]:
        names = real_listdir(path)
        counts["calls"] += 1
        counts["entries"] += len(names)
        return names

    monkeypatch.setattr(fs, "listdir", counting_listdir)
    with FilesystemTransport(f"filesys:{tmp_path}/b{backlog}") as transport:
        counts.clear()
        for start in range(0, backlog, 1000):
            transport.submit_tasks(QUEUE, [{"n": n} for n in range(start, min(start + 1000, backlog))])
        assert counts["calls"] == 0  # submitting lists nothing
        fetches = 0
        while tasks := transport.get_tasks(QUEUE, 100):
            fetches += 1
            before = counts["calls"]
            transport.ack_tasks(tasks)
            assert counts["calls"] == before  # acking lists nothing
        assert fetches == backlog // 100
    return {"entries_per_task": counts["entries"] / backlog, "listings_per_fetch": counts["calls"] / fetches}


def test_claim_cost_does_not_grow_with_the_backlog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each name is listed about once and each fetch lists a fixed number of directories."""
    small = _drain_counting(tmp_path, 500, monkeypatch)
    large = _drain_counting(tmp_path, 10000, monkeypatch)
    assert small["entries_per_task"] < 1.5 and large["entries_per_task"] < 1.5
    assert small["listings_per_fetch"] <= 15 and large["listings_per_fetch"] <= 15


def test_waiting_fetch_does_not_spin(tmp_path: Path) -> None:
    with FilesystemTransport(f"filesys:{tmp_path}") as transport:
        transport.submit_task(QUEUE, {})
        transport.purge(QUEUE)
        cpu = time.process_time()
        assert transport.get_task(QUEUE, timeout_s=1.0) is None
        assert time.process_time() - cpu < 0.3


# -- garbage, leases ---------------------------------------------------------------------------------


def test_stray_files_go_to_dead_letters(tmp_path: Path) -> None:
    with FilesystemTransport(f"filesys:{tmp_path}") as transport:
        transport.submit_task(QUEUE, {"good": 1})
        bucket = next((tmp_path / "queues" / QUEUE / "ready" / "0").iterdir())
        (bucket / "notes.txt~").write_text("an editor's backup")
        (bucket / ".hidden.swp").write_text("ignored: starts with a dot")
        (tmp_path / "queues" / QUEUE / "delayed" / "garbage").write_text("{}")
        tasks = transport.get_tasks(QUEUE, 10)
        assert [task.payload for task in tasks] == [{"good": 1}]
        transport.ack_tasks(tasks)
        reasons = sorted(d.reason for d in transport.dead_tasks(QUEUE))
        assert len(reasons) == 2 and all(r.startswith("undecodable task body") for r in reasons)
        assert transport.stats(QUEUE).ready == 0


def test_extend_may_shorten_a_lease(tmp_path: Path) -> None:
    with FilesystemTransport(f"filesys:{tmp_path}") as transport:
        transport.submit_task(QUEUE, {})
        task = transport.get_task(QUEUE, lease_s=60)
        assert task is not None and transport.extend(task, 0.2) is True
        time.sleep(1.3)  # the full in-flight scan runs at most once a second
        again = transport.get_task(QUEUE, timeout_s=2)
        assert again is not None and again.attempts == 2
        assert transport.extend(task, 60) is False
        transport.ack(again)


def test_expired_claims_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(filesystem_admin, "CLAIM_SWEEP_S", 0.2)
    with FilesystemTransport(f"filesys:{tmp_path}") as transport:
        assert transport.claim_once("tick:1", 0.1) is True
        assert transport.claim_once("tick:2", 60) is True
        assert len(list((tmp_path / "claims").iterdir())) == 2
        time.sleep(0.6)
        assert transport.claim_once("tick:3", 60) is True  # sweeps tick:1, expired 0.5 s ago
        assert len(list((tmp_path / "claims").iterdir())) == 2
        assert transport.claim_once("tick:2", 60) is False
        assert transport.claim_once("tick:1", 60) is True


def test_a_queue_removed_by_hand_comes_back(tmp_path: Path) -> None:
    with FilesystemTransport(f"filesys:{tmp_path}") as transport:
        transport.submit_task(QUEUE, {"n": 1})
        assert transport.get_task(QUEUE) is not None
        shutil.rmtree(tmp_path / "queues" / QUEUE)
        assert transport.get_task(QUEUE) is None
        transport.submit_task(QUEUE, {"n": 2})
        task = transport.get_task(QUEUE, timeout_s=2)
        assert task is not None and task.payload == {"n": 2}
        transport.ack(task)
        assert transport.stats(QUEUE) == QueueStats()


# -- URLs -----------------------------------------------------------------------------------------


def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    forms = {
        f"filesys:{tmp_path}/a": f"{tmp_path}/a",
        "filesys:rel/dir": f"{tmp_path}/rel/dir",
        f"file://{tmp_path}/b": f"{tmp_path}/b",
        f"filesys:{tmp_path}/c?lease_s=5&fsync=1&mode=0o640": f"{tmp_path}/c",
    }
    for url, root in forms.items():
        with get_transport(url) as transport:
            assert isinstance(transport, FilesystemTransport)
            assert transport.root == root
            transport.submit_task(QUEUE, {})
            assert transport.stats(QUEUE).ready == 1
    with get_transport(f"filesys:{tmp_path}/c?lease_s=5&fsync=1&mode=0o640") as transport:
        assert (transport.lease_s, transport.fsync, transport.file_mode) == (5.0, True, 0o640)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "url",
    [
        "filesys:",
        "file:relative/dir",
        "filesys://host/dir",
        "file://host/dir",
        "filesys:/tmp/x?mode=0o700",
        "filesys:/tmp/x?mode=0o400",
        "filesys:/tmp/x?mode=abc",
        "filesys:/tmp/x?fsync=2",
        "filesys:/tmp/x?lease_s=0",
        "filesys:/tmp/x?bogus=1",
    ],
)
def test_bad_urls_are_rejected(url: str) -> None:
    with pytest.raises(TransportURLError):
        get_transport(url)


def test_receipts_are_portable_and_checked(tmp_path: Path) -> None:
    with FilesystemTransport(f"filesys:{tmp_path}") as first, FilesystemTransport(f"filesys:{tmp_path}") as second:
        first.submit_task(QUEUE, {"x": 1})
        task = first.get_task(QUEUE)
        assert task is not None
        forged = type(task).from_dict({**task.to_dict(), "receipt": "../../claims/x"})
        second.ack(forged)  # a receipt that is not an in-flight name touches nothing
        assert second.extend(forged, 5) is False
        assert second.stats(QUEUE).in_flight == 1
        second.ack(type(task).from_dict(json.loads(json.dumps(task.to_dict()))))
        assert second.stats(QUEUE) == QueueStats()


# -- keyed state, cancel ----------------------------------------------------------------------------


def _files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_a_sweep_after_the_ttl_leaves_no_file_of_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state" / QUEUE
    # The store's clock, held still: on a loaded machine 200 puts may take longer than the short TTL.
    now_ns = [time.time_ns()]
    monkeypatch.setattr(filesystem_state, "time", types.SimpleNamespace(time_ns=lambda: now_ns[0]))
    with FilesystemTransport(f"filesys:{tmp_path}") as transport:
        transport.state_put(QUEUE, "short", "v", 0.3)
        transport.state_put(QUEUE, "short", "v2", 0.3)  # replaced: still one record
        assert transport.state_add(QUEUE, "Claimed.X", "v", 0.3) is True
        transport.state_put(QUEUE, "gone", "v", 0.3)
        assert transport.state_delete(QUEUE, "gone") is True  # its marker goes with it
        for n in range(200):
            transport.state_put(QUEUE, f"long.{n}", "v", 60)
        assert {"records/short", "records/claimed.x~101", "lock"} <= set(_files(state))
        reads = Counter[str]()
        real_expiry = filesystem_state._expiry

        def counting_expiry(path: str) -> int | None:
            reads[path.rsplit("/", 1)[-1]] += 1
            return real_expiry(path)

        monkeypatch.setattr(filesystem_state, "_expiry", counting_expiry)
        assert transport.state_sweep() == 0  # nothing due yet
        now_ns[0] += 600_000_000
        assert transport.state_sweep() == 2  # short and Claimed.X; gone was deleted already
        assert sorted(reads) == ["claimed.x~101", "short"]  # the live records were not read
        files = _files(state)
        assert not [f for f in files if "short" in f or "claimed" in f or "gone" in f]
        assert len(files) == 1 + 2 * 200  # the lock, the live records and their markers
        assert len(list((state / "expiring").glob("*/*"))) == 1  # the swept subs were removed
        assert transport.state_sweep() == 0
        assert transport.state_keys(QUEUE) == sorted(f"long.{n}" for n in range(200))
    assert list((tmp_path / "tmp").iterdir()) == []


def test_keys_that_differ_in_case_or_are_dots_are_records_of_their_own(tmp_path: Path) -> None:
    keys = [".", "..", ".hidden", "a", "A", "Ab.C", "aB.c", "x" * 200, "X" * 200, "a-1:_"]
    with FilesystemTransport(f"filesys:{tmp_path}") as transport:
        for key in keys:
            transport.state_put(QUEUE, key, f"value of {key}", 60)
        assert [transport.state_get(QUEUE, key) for key in keys] == [f"value of {key}" for key in keys]
        (tmp_path / "state" / QUEUE / "records" / "not~a~record").write_text("x")  # ignored
        assert transport.state_keys(QUEUE) == sorted(keys)
        assert transport.state_keys(QUEUE, ".") == [".", "..", ".hidden"]
        names = os.listdir(tmp_path / "state" / QUEUE / "records")
        assert max(len(name) for name in names) <= 255 and not [n for n in names if n.startswith(".")]
        assert len({name.lower() for name in names}) == len(names)  # apart on a case-insensitive filesystem too
        assert transport.state_delete(QUEUE, "A") is True
        assert transport.state_get(QUEUE, "a") == "value of a"


def test_add_has_one_winner_among_processes_also_over_expired_records(tmp_path: Path) -> None:
    url = f"filesys:{tmp_path}"
    with FilesystemTransport(url) as transport:
        for n in range(100):
            transport.state_put(QUEUE, f"k.{n}", "expired", 0.05)
        start_at = str(time.time() + 2.0)
        children = [_child("add", url, QUEUE, "100", start_at) for _ in range(3)]
        won = [line.split() for c in children for line in c.communicate(timeout=120)[0].splitlines()]
        assert [c.returncode for c in children] == [0] * 3
        assert sorted(int(n) for n, _ in won) == list(range(100))
        assert all(transport.state_get(QUEUE, f"k.{n}") == pid for n, pid in won)
        assert len({pid for _, pid in won}) > 1  # they did compete


def test_a_cancelled_task_leaves_no_file_behind(tmp_path: Path) -> None:
    with FilesystemTransport(f"filesys:{tmp_path}") as transport:
        ready = transport.submit_task(QUEUE, {"n": 1}, priority=3)
        delayed = transport.submit_task(QUEUE, {"n": 2}, delay_s=60)
        kept = transport.submit_task(QUEUE, {"n": 3})
        stats = transport.stats(QUEUE)
        assert (stats.ready, stats.delayed, stats.in_flight) == (2, 1, 0)
        assert transport.cancel(QUEUE, ready) is True
        assert transport.cancel(QUEUE, delayed) is True
        assert transport.cancel(QUEUE, "../../claims") is False
        files = _files(tmp_path)
        assert not [f for f in files if ready in f or delayed in f]
        assert [f for f in files if kept in f]
        stats = transport.stats(QUEUE)
        assert (stats.ready, stats.delayed, stats.in_flight) == (1, 0, 0)


def test_cancel_and_claims_racing_in_other_processes_never_both_get_a_task(tmp_path: Path) -> None:
    url = f"filesys:{tmp_path}"
    with FilesystemTransport(url) as transport:
        ids = transport.submit_tasks(QUEUE, [{"n": n} for n in range(400)])
        start_at = time.time() + 2.0
        consumers = [_child("consume", url, QUEUE, str(start_at)) for _ in range(2)]
        order = ids[:]
        random.Random(3).shuffle(order)
        _wait_until(start_at)
        cancelled = {task_id for task_id in order if transport.cancel(QUEUE, task_id)}
        lines = [line for c in consumers for line in c.communicate(timeout=120)[0].splitlines() if line]
        delivered = {line[2:] for line in lines if line.startswith("D ")}
        assert cancelled and delivered
        assert not cancelled & delivered
        assert cancelled | delivered == set(ids)
        assert transport.stats(QUEUE) == QueueStats()


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "produce":
        produce(args[0], args[1], int(args[2]), float(args[3]))
    elif mode == "consume":
        consume(args[0], args[1], float(args[2]))
    elif mode == "churn":
        churn(args[0], args[1])
    elif mode == "add":
        add(args[0], args[1], int(args[2]), float(args[3]))
