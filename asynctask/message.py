"""Tasks, the queue-name rule and the encoding of stored bodies.

A ``Task`` is what a transport hands a worker: frozen, so a worker cannot change what the transport
will acknowledge. Payloads travel as compact JSON text; :func:`encode_payload` is the one gate every
transport passes a payload through before it stores anything, so a bad payload stores nothing.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from asynctask.errors import PayloadError, QueueNameError, TaskDecodeError

__all__ = [
    "MAX_PRIORITY",
    "DeadTask",
    "QueueStats",
    "StoredBody",
    "Task",
    "decode_body",
    "decode_payload",
    "encode_body",
    "encode_payload",
    "new_task_id",
    "new_task_ids",
    "validate_delay",
    "validate_priority",
    "validate_queue_name",
]

#: Priorities run from 0 (the default) to MAX_PRIORITY; higher runs first.  The bound is AMQP's
#: ``x-max-priority`` sweet spot, so every transport can honour the same range.
MAX_PRIORITY = 9

# rex.asynctask's rule, made strict: ``\Z`` (not ``$``) so a trailing newline is rejected, and no
# double underscores so ``scheduled_x`` style names stay unambiguous.
_QUEUE_NAME_RE = re.compile(r"[a-z](?:_?[a-z0-9])+\Z")
_QUEUE_NAME_MAX = 100
_QUEUE_NAME_RULE = (
    "2 to 100 characters, a lowercase letter first, then lowercase letters, digits and single"
    " underscores, ending with a letter or digit"
)


def validate_queue_name(queue: object) -> str:
    """Return ``queue`` when it is a valid queue name.

    Raises :class:`QueueNameError` naming the bad value and the rule otherwise.
    """
    if not isinstance(queue, str) or len(queue) > _QUEUE_NAME_MAX or _QUEUE_NAME_RE.match(queue) is None:
        raise QueueNameError(f"invalid queue name {queue!r}: {_QUEUE_NAME_RULE}")
    return queue


def validate_priority(priority: object) -> int:
    """Return ``priority`` when it is an int from 0 to :data:`MAX_PRIORITY`; else raise PayloadError."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise PayloadError(f"invalid priority {priority!r}: an integer from 0 to {MAX_PRIORITY} is allowed")
    return priority


def validate_delay(delay_s: object, name: str = "delay_s") -> float:
    """Return ``delay_s`` as a float when it is a finite number >= 0, else raise PayloadError.

    ``name`` is the argument's name in the message (``timeout_s`` checks the same way).
    """
    if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)) or not math.isfinite(delay_s) or delay_s < 0:
        raise PayloadError(f"invalid {name} {delay_s!r}: a finite number of seconds >= 0 is allowed")
    return float(delay_s)


# Built once: json.dumps with options builds a new encoder per call, which doubles the cost of
# encoding a batch of small payloads.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_payload(payload: object) -> str:
    """Encode a payload as compact JSON text.

    ``None`` is ``{}``. Raises :class:`PayloadError` naming the problem when the payload is not a
    dict, has a non-string key, or holds a value JSON cannot represent (NaN, a set, an object...).
    """
    if payload is None:
        return "{}"
    if not isinstance(payload, dict):
        raise PayloadError(
            f"payload must be a JSON object (dict) or None, not {type(payload).__name__}: {payload!r:.80}"
        )
    for key in payload:
        if not isinstance(key, str):
            raise PayloadError(f"payload keys must be strings, not {type(key).__name__}: {key!r:.80}")
    try:
        return _ENCODER.encode(payload)
    except (TypeError, ValueError, RecursionError) as exc:
        raise PayloadError(f"payload is not JSON-encodable: {exc}") from None


# Built once as well: the stores hold UTF-8, so decoding the bytes first and then the text is
# quicker than json.loads(bytes), which guesses the encoding on every call.
_DECODE = json.JSONDecoder().decode


def decode_payload(text: str | bytes) -> dict[str, Any]:
    """Decode a stored body (JSON text, or its UTF-8 bytes), the one decoder every transport uses.

    Raises :class:`TaskDecodeError` saying why when it is not UTF-8, not JSON, or not a JSON object.
    """
    try:
        value = _DECODE(text if type(text) is str else text.decode())  # type: ignore[union-attr]
    except (ValueError, TypeError, AttributeError) as exc:  # UnicodeDecodeError is a ValueError
        raise TaskDecodeError(f"stored task body is not valid JSON: {exc}") from None
    if type(value) is not dict:
        raise TaskDecodeError(f"stored task body is JSON but not an object: {type(value).__name__}")
    return value


def encode_body(payload: object, meta: object = None) -> str:
    """The stored body of a task: its payload as :func:`encode_payload` makes it when ``meta`` is
    empty (the body every task had before ``meta`` existed), else the JSON array ``[payload, meta]``
    (an old body is always an object, so the two never mix).

    Raises :class:`PayloadError` as :func:`encode_payload` does, or naming ``meta`` when it is not a
    JSON object.
    """
    text = encode_payload(payload)
    if not meta:
        return text
    if not isinstance(meta, dict) or not all(isinstance(key, str) for key in meta):
        raise PayloadError(f"meta must be a JSON object (dict with string keys), not {meta!r:.80}")
    try:
        return f"[{text},{_ENCODER.encode(meta)}]"
    except (TypeError, ValueError, RecursionError) as exc:
        raise PayloadError(f"meta is not JSON-encodable: {exc}") from None


def decode_body(text: str | bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """(payload, meta) of a stored body (:func:`encode_body`); meta is ``{}`` for a plain payload.

    Raises :class:`TaskDecodeError` as :func:`decode_payload` does.
    """
    if text[:1] not in ("[", b"["):
        return decode_payload(text), {}
    try:
        value = _DECODE(text if type(text) is str else text.decode())  # type: ignore[union-attr]
    except (ValueError, TypeError, AttributeError) as exc:
        raise TaskDecodeError(f"stored task body is not valid JSON: {exc}") from None
    if type(value) is not list or len(value) != 2 or type(value[0]) is not dict or type(value[1]) is not dict:
        raise TaskDecodeError("stored task body is a JSON array but not [payload object, meta object]")
    return value[0], value[1]


def new_task_id() -> str:
    """A new task id: 32 lowercase hex digits (128 random bits), unique without coordination."""
    return os.urandom(16).hex()


def new_task_ids(count: int) -> list[str]:
    """``count`` new task ids as :func:`new_task_id` makes them, from one read of the OS's random source."""
    hexes = os.urandom(16 * count).hex()
    return [hexes[i : i + 32] for i in range(0, len(hexes), 32)]


@dataclass(frozen=True)
class Task:
    """One delivery of a task.

    ``attempts`` counts deliveries so far (1 on the first), less those that ended in a crash of the
    worker's process (a crash is not a failed attempt: :mod:`asynctask.workers.crashes`).
    ``payload`` is the user's; ``meta`` the framework's (:func:`encode_body`).
    ``receipt`` is private to the transport that delivered the task: it names this delivery, so
    that an ``ack`` of a delivery whose lease was lost cannot remove a later delivery of the same
    task.  It is a string, so a task can be
    handed to another process (the supervisor) and still be acked or given back there.
    """

    id: str
    queue: str
    payload: dict[str, Any]
    attempts: int = 1
    enqueued_at: float = 0.0
    priority: int = 0
    receipt: str = field(default="", repr=False, compare=False)
    #: the framework's and middleware's JSON object stored beside the payload (the function a
    #: ``@task`` task calls, its options...); ``{}`` when none was given at submit
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, receipt included (for handing the task to another process)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        """The inverse of :meth:`to_dict`."""
        return cls(**data)


@dataclass(frozen=True)
class QueueStats:
    """Counts for one queue at one instant (a snapshot, not a transaction).

    ``oldest_ready_age_s`` is how long the oldest ready task has waited since it was enqueued (or
    replayed); None when no task is ready.
    """

    ready: int = 0
    delayed: int = 0
    in_flight: int = 0
    dead: int = 0
    oldest_ready_age_s: float | None = None


class StoredBody:
    """``payload`` and ``meta`` decoded from ``body``, for the records that hold a stored body as it
    was found (it may not decode: that can be why a task is dead)."""

    body: str

    @property
    def payload(self) -> dict[str, Any] | None:
        """The decoded payload, or None when the body does not decode."""
        try:
            return decode_body(self.body)[0]
        except TaskDecodeError:
            return None

    @property
    def meta(self) -> dict[str, Any]:
        """The task's meta (``{}`` when it had none or its body does not decode)."""
        try:
            return decode_body(self.body)[1]
        except TaskDecodeError:
            return {}


@dataclass(frozen=True)
class DeadTask(StoredBody):
    """A task in a queue's dead-letter store.

    ``body`` is the stored payload text exactly as found (it may not decode: that can be why it is
    dead); ``payload`` is its decoded value, or None when it does not decode.
    """

    id: str
    queue: str
    body: str
    reason: str
    attempts: int
    dead_at: float
    #: the priority it had (0 where the transport does not keep it) and when it was enqueued (0: unknown)
    priority: int = 0
    enqueued_at: float = 0.0
