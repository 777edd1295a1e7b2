"""asynctask.importing: the required modules are imported from the current directory first, and an
import that fails names the user's file and line (the full traceback at DEBUG)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asynctask.errors import ConfigurationError
from asynctask.importing import describe_import_error, import_modules


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty project directory as the current directory; its modules are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_modules_are_found_in_the_current_directory(project: Path) -> None:
    write(project, "imp_app/__init__.py", "")
    write(project, "imp_app/workers.py", "LOADED = True\n")
    import_modules(["imp_app.workers"])
    assert sys.modules["imp_app.workers"].LOADED is True
    assert sys.path[0] == str(project)


def test_an_error_inside_a_package_names_the_users_file_and_line(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(project, "imp_bad/__init__.py", "from imp_bad import helpers\n")
    write(project, "imp_bad/helpers.py", "import json\n\nVALUE = json.loads(undefined_name)\n")
    with caplog.at_level(logging.DEBUG, logger="asynctask.importing"), pytest.raises(ConfigurationError) as info:
        import_modules(["imp_bad"])
    assert str(info.value) == (
        "asynctask_require: cannot import module 'imp_bad': NameError: name 'undefined_name' is not defined"
        f" ({Path('imp_bad', 'helpers.py')}, line 3: VALUE = json.loads(undefined_name))"
    )
    [record] = [r for r in caplog.records if r.name == "asynctask.importing"]
    assert record.levelno == logging.DEBUG and record.exc_info is not None
    assert "Traceback" in caplog.text and "helpers.py" in caplog.text


def test_an_error_raised_inside_a_library_points_at_the_users_call(project: Path) -> None:
    write(project, "imp_lib.py", "import json\n\njson.loads('{not json')\n")
    with pytest.raises(ConfigurationError) as info:
        import_modules(["imp_lib"])
    message = str(info.value)
    assert "JSONDecodeError" in message
    assert message.endswith("(imp_lib.py, line 3: json.loads('{not json'))")


def test_a_syntax_error_names_the_file_that_does_not_compile(project: Path) -> None:
    write(project, "imp_syntax/__init__.py", "from . import broken\n")
    write(project, "imp_syntax/broken.py", "def f(:\n    pass\n")
    with pytest.raises(ConfigurationError) as info:
        import_modules(["imp_syntax"])
    assert f"({Path('imp_syntax', 'broken.py')}, line 1)" in str(info.value)


def test_a_missing_module_has_no_location(project: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        import_modules(["imp_no_such_module"])
    assert str(info.value) == (
        "asynctask_require: cannot import module 'imp_no_such_module':"
        " ModuleNotFoundError: No module named 'imp_no_such_module'"
    )


def test_describe_import_error_outside_the_current_directory(tmp_path: Path) -> None:
    source = tmp_path / "elsewhere.py"
    source.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(RuntimeError) as info:
        exec(compile(source.read_text(), str(source), "exec"), {})
    assert describe_import_error(info.value) == f"RuntimeError: boom ({source}, line 1: raise RuntimeError('boom'))"
