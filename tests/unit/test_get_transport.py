"""get_transport: URL resolution, unknown schemes, password masking, entry points."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from asynctask import transports
from asynctask.errors import ConfigurationError, TransportURLError, UnknownTransportError
from asynctask.transports import get_transport, known_schemes, quiet_drivers, resolve_transport_url
from asynctask.transports.base import mask_url, parse_url
from asynctask.transports.memory import MemoryTransport


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ["ASYNCTASK_TRANSPORT", "ASYNCTASK_CONFIG", "ASYNCTASK_HOME"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(transports, "_logged_choice", set())


def test_memory_url_and_alias() -> None:
    assert isinstance(get_transport("memory://"), MemoryTransport)
    assert isinstance(get_transport("localmem://"), MemoryTransport)


def test_memory_transports_of_one_url_share_a_store() -> None:
    get_transport("memory://shared-one").submit_task("emails", {"a": 1})
    assert get_transport("memory://shared-one").poll_queue("emails") == 1
    assert get_transport("memory://shared-two").poll_queue("emails") == 0


def test_unknown_scheme_lists_known_and_suggests_nearest() -> None:
    with pytest.raises(UnknownTransportError) as info:
        get_transport("reddis://user:secret@localhost/0")
    message = str(info.value)
    assert "'reddis'" in message and "did you mean 'redis'?" in message
    assert "filesys" in message and "pgsql" in message
    assert "secret" not in message


def test_url_without_scheme_is_rejected() -> None:
    with pytest.raises(TransportURLError) as info:
        get_transport("/var/lib/queues")
    assert "has no scheme" in str(info.value)


def test_unknown_option_names_it_and_the_allowed_ones() -> None:
    with pytest.raises(TransportURLError) as info:
        get_transport("memory://?lease=5")
    assert "'lease'" in str(info.value) and "lease_s" in str(info.value)


def test_bad_option_value() -> None:
    with pytest.raises(TransportURLError) as info:
        get_transport("memory://?lease_s=-1")
    assert "lease_s='-1'" in str(info.value)


def test_password_never_shows() -> None:
    url = "redis://user:hunter2@example.org:6379/0"
    assert mask_url(url) == "redis://user:***@example.org:6379/0"
    assert "hunter2" not in repr(parse_url(url))
    assert mask_url("memory://") == "memory://"
    with pytest.raises(TransportURLError) as info:
        parse_url("redis://user:hunter2@example.org:99999/0")
    assert "hunter2" not in str(info.value)


def test_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "asynctask.yaml").write_text("asynctask_transport: memory://from-file\n")
    monkeypatch.setenv("ASYNCTASK_TRANSPORT", "memory://from-env")
    assert resolve_transport_url() == "memory://from-env"
    assert resolve_transport_url("memory://explicit") == "memory://explicit"


def test_config_file_then_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "asynctask.yaml").write_text("asynctask_transport: memory://from-file\n")
    assert resolve_transport_url() == "memory://from-file"
    other = tmp_path / "other.yaml"
    other.write_text("asynctask_transport: memory://from-other\n")
    monkeypatch.setenv("ASYNCTASK_CONFIG", str(other))
    assert resolve_transport_url() == "memory://from-other"
    monkeypatch.setenv("ASYNCTASK_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigurationError) as info:
        resolve_transport_url()
    assert "missing.yaml" in str(info.value)


def test_a_misspelled_setting_in_the_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "asynctask.yaml").write_text("asynctask_transprot: memory://typo\n")
    with pytest.raises(ConfigurationError) as info:
        get_transport()
    assert str(info.value).startswith("asynctask.yaml: unknown setting 'asynctask_transprot'")
    assert "(did you mean 'asynctask_transport'?)" in str(info.value)
    named = tmp_path / "named.yaml"
    named.write_text("asynctask_workers: {emails: {worker: send_email, procesess: 2}}\n")
    monkeypatch.setenv("ASYNCTASK_CONFIG", str(named))
    with pytest.raises(ConfigurationError, match="did you mean 'processes'"):
        resolve_transport_url()
    # the URL given, or the environment's, needs no file
    assert resolve_transport_url("memory://given") == "memory://given"
    monkeypatch.setenv("ASYNCTASK_TRANSPORT", "memory://env")
    assert resolve_transport_url() == "memory://env"


@pytest.mark.parametrize(("level", "pika_level"), [(logging.INFO, logging.CRITICAL), (logging.DEBUG, logging.NOTSET)])
def test_drivers_speak_only_at_debug(level: int, pika_level: int) -> None:
    pika_logger = logging.getLogger("pika")
    before = pika_logger.level
    try:
        quiet_drivers(level)
        assert pika_logger.level == pika_level
        assert logging.getLogger("pika.channel").isEnabledFor(logging.ERROR) == (level == logging.DEBUG)
    finally:
        pika_logger.setLevel(before)


def test_embedded_default_under_asynctask_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ASYNCTASK_HOME", str(tmp_path / "home"))
    assert resolve_transport_url() == "filesys:" + str(tmp_path / "home")
    monkeypatch.delenv("ASYNCTASK_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert resolve_transport_url() == "filesys:" + str(tmp_path / "user" / ".local" / "share" / "asynctask")


def test_choice_is_logged_once_with_password_masked(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ASYNCTASK_TRANSPORT", "memory://user:pw-secret@x")
    with caplog.at_level(logging.INFO, logger="asynctask.transports"):
        resolve_transport_url()
        resolve_transport_url()
    lines = [r.getMessage() for r in caplog.records if "using transport" in r.getMessage()]
    assert lines == ["using transport memory://user:***@x (from ASYNCTASK_TRANSPORT)"]


def test_entry_point_adds_a_scheme(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A third-party package registers a scheme through the asynctask.transports group."""
    site = tmp_path / "site"
    (site / "thirdparty_transport-1.0.dist-info").mkdir(parents=True)
    (site / "thirdparty_transport-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: thirdparty-transport\nVersion: 1.0\n"
    )
    (site / "thirdparty_transport-1.0.dist-info" / "entry_points.txt").write_text(
        "[asynctask.transports]\nthirdq = thirdparty_transport:ThirdTransport\n"
    )
    (site / "thirdparty_transport.py").write_text(
        "from asynctask.transports.memory import MemoryTransport\n"
        "class ThirdTransport(MemoryTransport):\n    schemes = ('thirdq',)\n"
    )
    monkeypatch.syspath_prepend(str(site))
    assert "thirdq" in known_schemes()
    transport = get_transport("thirdq://x")
    assert type(transport).__name__ == "ThirdTransport"
    transport.submit_task("emails", {})
    assert transport.poll_queue("emails") == 1
    sys.modules.pop("thirdparty_transport", None)
