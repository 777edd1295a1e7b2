"""Task, the queue-name rule and payload encoding."""

from __future__ import annotations

import math

import pytest

from asynctask.errors import PayloadError, QueueNameError, TaskDecodeError
from asynctask.task import DeadTask, Task, decode_payload, encode_payload, validate_queue_name


@pytest.mark.parametrize("name", ["ab", "a1", "emails", "queue_foo", "a_b_c_1", "q" * 100])
def test_valid_queue_names(name: str) -> None:
    assert validate_queue_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "a", "1a", "_a", "a_", "a__b", "Ab", "ab\n", "\nab", "a.b", "a-b", "q" * 101, b"ab", None]
)
def test_invalid_queue_names_name_the_value_and_the_rule(name: object) -> None:
    with pytest.raises(QueueNameError) as info:
        validate_queue_name(name)
    message = str(info.value)
    assert repr(name) in message
    assert "2 to 100 characters" in message and "single underscores" in message


def test_none_payload_encodes_as_empty_object() -> None:
    assert encode_payload(None) == "{}"


def test_payload_round_trips_compactly_and_keeps_unicode() -> None:
    text = encode_payload({"a": [1, 2.5, None, True], "é": "ü"})
    assert text == '{"a":[1,2.5,null,true],"é":"ü"}'
    assert decode_payload(text) == {"a": [1, 2.5, None, True], "é": "ü"}
    assert decode_payload(text.encode()) == decode_payload(text)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ([1], "not list"),
        ("x", "not str"),
        (3, "not int"),
        ({1: 2}, "keys must be strings"),
        ({"a": math.inf}, "not JSON-encodable"),
        ({"a": {1}}, "not JSON-encodable"),
    ],
)
def test_bad_payloads_say_what_is_wrong(payload: object, fragment: str) -> None:
    with pytest.raises(PayloadError) as info:
        encode_payload(payload)
    assert fragment in str(info.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"text"', b"\xff\xfe", ""])
def test_undecodable_bodies_raise_task_decode_error(text: str | bytes) -> None:
    with pytest.raises(TaskDecodeError):
        decode_payload(text)


def test_task_is_frozen_and_round_trips_through_a_dict() -> None:
    task = Task("id1", "emails", {"a": 1}, attempts=2, enqueued_at=1.5, priority=3, receipt="r")
    with pytest.raises(AttributeError):
        task.attempts = 3  # type: ignore[misc]
    again = Task.from_dict(task.to_dict())
    assert again == task and again.receipt == "r"
    assert "receipt" not in repr(task)


def test_dead_task_payload_is_none_when_the_body_does_not_decode() -> None:
    assert DeadTask("i", "q", '{"a":1}', "r", 1, 0.0).payload == {"a": 1}
    assert DeadTask("i", "q", "{oops", "r", 1, 0.0).payload is None


def test_error_docstring_is_the_default_message() -> None:
    assert str(PayloadError()).startswith("A task payload must be a JSON object")
    assert PayloadError("custom").message == "custom"
