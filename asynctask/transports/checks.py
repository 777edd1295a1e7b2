"""The argument checks of the transport contract, in one place so that every transport refuses alike.

:class:`~asynctask.transports.base.Transport` runs them in its public methods before calling a
transport's hook; a transport that overrides a public method for speed (one round trip for
``submit_task``) calls the same function.  Every check raises before anything is stored or sent,
with a message naming the argument, the bad value and what is allowed:

* queue name, payload, priority, ``delay_s`` and ``timeout_s``: :class:`QueueNameError` /
  :class:`PayloadError` (the rules of :mod:`asynctask.message`);
* ``lease_s``, ``max_count``, ``limit``, ``ids``, ``reason``, ``count_attempt``, claim key and
  ``ttl_s``: :class:`ValueError` ("``<name>=<value>``: ... is allowed");
* something that is not a :class:`~asynctask.message.Task` where a task is due: :class:`TypeError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from asynctask.message import Task, encode_body, encode_payload, validate_delay, validate_priority, validate_queue_name

#: Most tasks one ``get_tasks`` call may ask for.
MAX_BATCH = 1000


def _seconds(name: str, value: object) -> float:
    """``value`` as a float when it is a finite number > 0 (not a bool); else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r}: a number of seconds > 0 is allowed")
    return float(value)


def validate_lease(lease_s: object) -> float:
    """Return ``lease_s`` as a float when it is a finite number of seconds > 0; else ValueError."""
    if type(lease_s) is float and 0 < lease_s < math.inf:  # the lease keeper's every call
        return lease_s
    return _seconds("lease_s", lease_s)


def validate_max_count(max_count: object) -> int:
    """Return ``max_count`` when it is an int from 1 to :data:`MAX_BATCH`; else ValueError."""
    if isinstance(max_count, bool) or not isinstance(max_count, int) or not 1 <= max_count <= MAX_BATCH:
        raise ValueError(f"max_count={max_count!r}: an integer from 1 to {MAX_BATCH} is allowed")
    return max_count


def validate_limit(limit: object) -> int:
    """Return ``limit`` when it is an int >= 0 (not a bool); else ValueError."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit={limit!r}: an integer >= 0 is allowed")
    return limit


def validate_ids(ids: object) -> list[str] | None:
    """Return ``ids`` as a list without repeats (first occurrence kept), or None for None.

    ``ids`` must be a sequence (list, tuple) of strings; a bare string, a set or anything else
    raises ValueError (a string would otherwise name one id per character).
    """
    if ids is None:
        return None
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise ValueError(f"ids={ids!r:.80}: None or a sequence (list, tuple) of task id strings is allowed")
    for task_id in ids:
        if not isinstance(task_id, str):
            raise ValueError(f"ids: task ids are strings, not {type(task_id).__name__}: {task_id!r:.80}")
    return list(dict.fromkeys(ids))


def validate_task(task: object) -> Task:
    """Return ``task`` when it is a :class:`Task`; else TypeError."""
    if not isinstance(task, Task):
        raise TypeError(f"task={task!r:.80}: a Task (as a fetch returned it) is allowed, not {type(task).__name__}")
    return task


def validate_tasks(tasks: object) -> Sequence[Task]:
    """Return ``tasks`` when it is a list or tuple of :class:`Task` (a bare Task too is refused)."""
    if not isinstance(tasks, (list, tuple)):
        raise TypeError(f"tasks={tasks!r:.80}: a list or tuple of Task is allowed, not {type(tasks).__name__}")
    for task in tasks:
        validate_task(task)
    return tasks


def validate_flag(name: str, value: object) -> bool:
    """Return ``value`` when it is a bool; else ValueError."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r:.80}: True or False is allowed")
    return value


def validate_reason(reason: object) -> str:
    """Return ``reason`` when it is a str; else ValueError."""
    if not isinstance(reason, str):
        raise ValueError(f"reason={reason!r:.80}: a string is allowed")
    return reason


def validate_claim(key: object, ttl_s: object) -> tuple[str, float]:
    """Check ``claim_once`` arguments: a non-empty key of at most 200 characters, ttl > 0."""
    if not isinstance(key, str) or not key or len(key) > 200:
        raise ValueError(f"claim key {key!r:.80}: a non-empty string of at most 200 characters is allowed")
    return key, _seconds("ttl_s", ttl_s)


# Queue names already found valid: a producer submits to a few names again and again, and the set
# lookup costs a tenth of the regex.  Bounded, so that a stream of new names cannot grow it forever.
_valid_queues: set[str] = set()
_VALID_QUEUES_MAX = 10_000


def validate_submit_options(queue: object, delay_s: object, priority: object) -> float:
    """Check what one submit call applies to all its tasks; return ``delay_s`` as a float."""
    if type(queue) is not str or queue not in _valid_queues:
        name = validate_queue_name(queue)
        if len(_valid_queues) < _VALID_QUEUES_MAX:
            _valid_queues.add(name)
    # The common call (no delay, no priority) skips the full checks: they cost more than the rest.
    if type(priority) is not int or priority != 0:
        validate_priority(priority)
    if type(delay_s) is int and delay_s == 0:
        return 0.0
    return validate_delay(delay_s)


def prepare_submit(
    queue: object, payload: Any, delay_s: object, priority: object, meta: object = None
) -> tuple[str, float]:
    """Check one submission; return its JSON body (:func:`~asynctask.message.encode_body`) and its
    delay (the one-task fast paths use this)."""
    delay = validate_submit_options(queue, delay_s, priority)
    return (encode_body(payload, meta) if meta else encode_payload(payload)), delay
