"""Keyed state beside the queues: small records with a TTL (results, task status, cancel marks).

:class:`KeyedState` is the part of the transport contract that ``@task`` results, ``TaskHandle``
and cancel stand on.  A record lives under ``(queue, key)``: the queue scopes it (Redis keeps it
under the queue's hash tag), the key names it (``[A-Za-z0-9_.:-]``, 1 to 200 characters), the value
is text (JSON, by convention), and it is gone ``ttl_s`` seconds after it was written: a read never
returns an expired record, and expired records are removed without anyone asking (on the server's
own clock, or by :meth:`KeyedState.state_sweep`, which the supervisor runs: no unbounded growth).

Guarantees every transport gives (``tests/transports/test_contract_state.py`` checks each):

* ``state_put`` replaces a record in one step: a reader sees the old record or the new one, never a
  mix (so a status written with its result never disagrees with it);
* ``state_add`` writes only when no live record is there, atomically: of callers in any process or
  on any host, exactly one gets True;
* ``cancel(queue, task_id)`` removes a task that is ready or delayed (not taken by a worker) and
  returns True; False when it is taken, done, cancelled already, or unknown.  True means no
  ``get_tasks`` hands it out again.  AMQP cannot remove from the middle of a queue: it marks the
  task in the state store and the fetch that meets it drops it (a cancel racing the fetch of its
  task may return True while the task runs; and as it cannot tell an unknown id, or a task without
  ``meta`` that a worker took, from a waiting one, it says True for those, to no effect).

A transport whose server cannot keep such records (AMQP) uses another transport's: the setting
``asynctask_state_store`` names it (any transport URL); :attr:`KeyedState.state_store` is then set
and every state call goes there.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from asynctask.errors import ConfigurationError
from asynctask.message import validate_queue_name

if TYPE_CHECKING:
    from asynctask.results import TaskHandle

__all__ = ["KEY_RULE", "KeyedState", "validate_state_key"]

_KEY_RE = re.compile(r"[A-Za-z0-9_.:-]{1,200}\Z")
KEY_RULE = "1 to 200 characters among A-Z a-z 0-9 _ . : -"
#: the longest pause of :meth:`KeyedState.state_wait` between two reads
WAIT_STEP_MAX_S = 0.05


def validate_state_key(key: object) -> str:
    if not isinstance(key, str) or _KEY_RE.match(key) is None:
        raise ValueError(f"state key {key!r:.80}: {KEY_RULE} is allowed")
    return key


def _ttl(ttl_s: object) -> float:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not 0 < ttl_s < float("inf"):
        raise ValueError(f"ttl_s={ttl_s!r:.80}: a finite number of seconds > 0 is allowed")
    return float(ttl_s)


def _value(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"state value {value!r:.80}: a str is allowed")
    return value


class KeyedState:
    """The keyed-state methods of a transport (mixed into :class:`~asynctask.transports.base.Transport`).

    Public methods check their arguments (ValueError / QueueNameError) and call the ``_state_*``
    hooks of :attr:`state_store` when one is set, else their own.
    """

    #: another transport that keeps this one's state (``asynctask_state_store``), or None
    state_store: KeyedState | None = None
    #: False where the server cannot keep records itself (AMQP): a state store is then required
    keeps_state: bool = True

    def _state(self) -> KeyedState:
        return self.state_store if self.state_store is not None else self

    def state_put(self, queue: str, key: str, value: str, ttl_s: float) -> None:
        """Write ``value`` under ``(queue, key)`` for ``ttl_s`` seconds, replacing any record."""
        validate_queue_name(queue)
        self._state()._state_put(queue, validate_state_key(key), _value(value), _ttl(ttl_s))

    def state_add(self, queue: str, key: str, value: str, ttl_s: float) -> bool:
        """Write as :meth:`state_put` only when no live record is there; True when written."""
        validate_queue_name(queue)
        return self._state()._state_add(queue, validate_state_key(key), _value(value), _ttl(ttl_s))

    def state_add_many(self, queue: str, keys: Sequence[str], value: str, ttl_s: float) -> list[bool]:
        """:meth:`state_add` of each key with the same value, in order (as few round trips as the
        store allows)."""
        validate_queue_name(queue)
        checked = [validate_state_key(key) for key in keys]
        return self._state()._state_add_many(queue, checked, _value(value), _ttl(ttl_s))

    def state_get(self, queue: str, key: str) -> str | None:
        """The live record's value, or None."""
        validate_queue_name(queue)
        return self._state()._state_get(queue, validate_state_key(key))

    def state_delete(self, queue: str, key: str) -> bool:
        """Remove the record; True when a live one was there."""
        validate_queue_name(queue)
        return self._state()._state_delete(queue, validate_state_key(key))

    def state_delete_many(self, queue: str, keys: Sequence[str]) -> None:
        """:meth:`state_delete` of each key, in as few round trips as the store allows."""
        validate_queue_name(queue)
        self._state()._state_delete_many(queue, [validate_state_key(key) for key in keys])

    def state_keys(self, queue: str, prefix: str = "") -> list[str]:
        """The keys of the live records of ``queue`` that start with ``prefix``, sorted."""
        validate_queue_name(queue)
        if not isinstance(prefix, str):
            raise ValueError(f"prefix {prefix!r:.80}: a str is allowed")
        return sorted(self._state()._state_keys(queue, prefix))

    def state_wait(self, queue: str, key: str, timeout_s: float) -> str | None:
        """The record's value once there is one, waiting up to ``timeout_s`` (None when none came).

        Reads again after 1 ms, doubling to :data:`WAIT_STEP_MAX_S`: a record written while it waits
        is seen within 50 ms, without spinning a core.
        """
        deadline = time.monotonic() + max(float(timeout_s), 0.0)
        step = 0.001
        while True:
            value = self.state_get(queue, key)
            remaining = deadline - time.monotonic()
            if value is not None or remaining <= 0:
                return value
            time.sleep(min(step, remaining))
            step = min(step * 2, WAIT_STEP_MAX_S)

    def state_sweep(self) -> int:
        """Remove expired records now; how many (0 where the server expires them itself)."""
        return self._state()._state_sweep()

    def cancel(self, queue: str, task_id: str) -> bool:
        """Cancel a task that no worker has taken yet (see the module docstring); True when it was."""
        validate_queue_name(queue)
        if not isinstance(task_id, str) or not task_id:
            raise ValueError(f"task id {task_id!r:.80}: a non-empty str is allowed")
        return self._cancel(queue, task_id)

    def handle(self, queue: str, task_id: str) -> TaskHandle:
        """A :class:`~asynctask.results.TaskHandle` for any task id of ``queue`` (status, result, cancel)."""
        from asynctask.results import TaskHandle  # noqa: PLC0415 - results imports this module

        validate_queue_name(queue)
        return TaskHandle(task_id, queue, self)

    def state_get_many(self, queue: str, keys: Sequence[str]) -> list[str | None]:
        """:meth:`state_get` of each key, in order, in as few round trips as the store allows."""
        validate_queue_name(queue)
        return self._state()._state_get_many(queue, [validate_state_key(key) for key in keys])

    # -- hooks -----------------------------------------------------------------------------------

    def _unsupported(self) -> ConfigurationError:
        return ConfigurationError(
            f"{type(self).__name__} keeps no task results, status or cancel marks itself: set"
            " asynctask_state_store (or $ASYNCTASK_STATE_STORE) to another transport URL, e.g. redis://..."
        )

    def _state_put(self, queue: str, key: str, value: str, ttl_s: float) -> None:
        raise self._unsupported()

    def _state_add(self, queue: str, key: str, value: str, ttl_s: float) -> bool:
        raise self._unsupported()

    def _state_get(self, queue: str, key: str) -> str | None:
        raise self._unsupported()

    def _state_add_many(self, queue: str, keys: list[str], value: str, ttl_s: float) -> list[bool]:
        return [self._state_add(queue, key, value, ttl_s) for key in keys]

    def _state_get_many(self, queue: str, keys: list[str]) -> list[str | None]:
        return [self._state_get(queue, key) for key in keys]

    def _state_delete(self, queue: str, key: str) -> bool:
        raise self._unsupported()

    def _state_delete_many(self, queue: str, keys: list[str]) -> None:
        for key in keys:
            self._state_delete(queue, key)

    def _state_keys(self, queue: str, prefix: str) -> list[str]:
        raise self._unsupported()

    def _state_sweep(self) -> int:
        return 0

    def _cancel(self, queue: str, task_id: str) -> bool:
        raise self._unsupported()
