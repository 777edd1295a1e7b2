"""``make demo``: a few hundred tasks through ``asynctask-workers`` on the embedded filesystem store.

1. makes a temporary ``ASYNCTASK_HOME`` (removed at the end; ``--keep`` keeps it) and writes an
   ``asynctask.yaml`` there naming four queues and the example workers of ``demo_workers.py``;
2. submits a few hundred tasks (one of them poisoned, so the dead-letter store has something);
3. runs ``asynctask-workers --config asynctask.yaml --halt-when-empty`` (its log goes to
   ``workers.log``) and shows progress per queue until it exits;
4. prints what happened: tasks done per queue, retries, dead letters and their reasons.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from asynctask.transports import get_transport  # noqa: E402

QUEUES = {"greetings": "greet", "thumbnails": "thumbnail", "uploads": "flaky", "crawler": "crawl"}
CONFIG = """\
# written by examples/demo.py
asynctask_transport: {url}
asynctask_require: [demo_workers]
asynctask_workers:
  greetings: greet
  thumbnails: {{worker: thumbnail, processes: 2}}
  uploads: flaky
  crawler: crawl
asynctask_workers_poll_interval: 100
"""


def submit(url: str) -> dict[str, int]:
    with get_transport(url) as transport:
        counts = {
            "greetings": len(transport.submit_tasks("greetings", [{"n": n, "who": "demo"} for n in range(200)])),
            "thumbnails": len(transport.submit_tasks("thumbnails", [{"image": f"img{n}.png"} for n in range(80)])),
            "uploads": len(transport.submit_tasks("uploads", [{"file": f"f{n}"} for n in range(40)])),
            "crawler": len(transport.submit_tasks("crawler", [{"url": "/", "depth": 0}])),
        }
        transport.submit_task("uploads", {"file": "bad", "poison": True})
        counts["uploads"] += 1
    return counts


def progress_line(url: str) -> str:
    parts = []
    with get_transport(url) as transport:
        for queue in QUEUES:
            stats = transport.stats(queue)
            waiting = stats.ready + stats.delayed + stats.in_flight
            parts.append(f"{queue}: {waiting:>3} left, {stats.dead} dead")
    return " | ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary ASYNCTASK_HOME")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="asynctask-demo-"))
    url = f"filesys:{home / 'store'}"
    config = home / "asynctask.yaml"
    config.write_text(CONFIG.format(url=url))
    log_path = home / "workers.log"
    print(f"ASYNCTASK_HOME={home}")
    print(f"config: {config}\n{config.read_text()}")
    try:
        submitted = submit(url)
        print("submitted: " + ", ".join(f"{q} {n}" for q, n in submitted.items()))
        command = [str(Path(sys.executable).parent / "asynctask-workers"), "--config", str(config), "--halt-when-empty"]
        print("running: " + " ".join(command[-3:]).join(["asynctask-workers ", ""]))
        env = {
            **os.environ,
            "ASYNCTASK_HOME": str(home),
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        started = time.monotonic()
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, env=env, stderr=log, stdout=log, cwd=home)
            tty, shown = sys.stdout.isatty(), ""
            while process.poll() is None:
                line = progress_line(url)
                if tty:
                    print(f"\r{time.monotonic() - started:5.1f}s  {line}", end="", flush=True)
                elif line != shown:
                    print(f"{time.monotonic() - started:5.1f}s  {line}", flush=True)
                shown = line
                time.sleep(0.2)
        elapsed = time.monotonic() - started
        print(f"\r{elapsed:5.1f}s  {progress_line(url)}")
        print(f"asynctask-workers exited with code {process.returncode} after {elapsed:.1f} s")
        report(url, log_path.read_text())
        return process.returncode
    finally:
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def report(url: str, log: str) -> None:
    retries = log.count("retrying in")
    requeued = log.count("halted after")
    print(f"\nwhat happened (from workers.log, {len(log.splitlines())} lines):")
    for line in log.splitlines():
        if "halted after" in line:
            print("  " + line.split(": ", 1)[1])
    print(f"  {retries} failed attempts of 'flaky' were retried with backoff")
    with get_transport(url) as transport:
        for queue in QUEUES:
            for dead in transport.dead_tasks(queue):
                print(
                    f"  dead letter in {queue}: {dead.payload} after {dead.attempts} attempt(s):"
                    f" {dead.reason.splitlines()[0]}"
                )
    print(f"  ({requeued} workers halted; the crawler's tasks were requeued from inside process())")
    print(f"\nwith --keep, look around: ASYNCTASK_TRANSPORT={url} asynctask queues  (or: asynctask dead list uploads)")


if __name__ == "__main__":
    sys.exit(main())
