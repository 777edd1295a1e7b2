"""Task, the queue-name rule and payload encoding."""

from __future__ import annotations

import math
import re

import pytest

from asynctask.errors import PayloadError, QueueNameError, TaskDecodeError
from asynctask.message import (
    DeadTask,
    Task,
    decode_payload,
    encode_payload,
    new_task_id,
    new_task_ids,
    validate_delay,
    validate_queue_name,
)


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


def test_bytes_and_text_decode_alike_and_bad_utf8_is_a_decode_error() -> None:
    assert decode_payload(b'{"a":"\xc3\xa9"}') == decode_payload('{"a":"é"}') == {"a": "é"}
    with pytest.raises(TaskDecodeError, match="not valid JSON"):
        decode_payload(b'{"a":"\xff"}')


def test_task_ids_are_32_hex_digits_and_distinct() -> None:
    ids = [new_task_id() for _ in range(100)] + new_task_ids(100)
    assert all(re.fullmatch(r"[0-9a-f]{32}", task_id) for task_id in ids)
    assert len(set(ids)) == 200
    assert new_task_ids(0) == []


def test_validate_delay_names_the_argument() -> None:
    assert validate_delay(0) == 0.0 and validate_delay(1.5) == 1.5
    with pytest.raises(PayloadError, match=r"^invalid timeout_s -1: a finite number of seconds >= 0 is allowed$"):
        validate_delay(-1, "timeout_s")
