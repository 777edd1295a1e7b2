"""The transport fixture: every ``harness_<name>.py`` beside this file adds one transport.

A harness module defines ``harness(tmp_path: Path) -> ContextManager[Harness]``.  The contract
suite (``test_contract.py``) runs once per harness module found, so a new transport only adds a
file here.  Tests use a queue name of their own (the ``queue`` fixture); a harness must leave the
server as it found it (delete only its own keys, schema, queues or vhost objects).
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from harnesslib import Harness

from asynctask.transports.base import Transport

HERE = Path(__file__).parent


def _harness_modules() -> dict[str, ModuleType]:
    modules = {}
    for path in sorted(HERE.glob("harness_*.py")):
        name = path.stem.removeprefix("harness_")
        spec = importlib.util.spec_from_file_location(f"asynctask_test_harness_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules[name] = module
    return modules


HARNESS_MODULES = _harness_modules()
ORDER = ["memory", "filesystem", "redis", "pgsql", "amqp"]
HARNESS_NAMES = sorted(HARNESS_MODULES, key=lambda n: (ORDER.index(n) if n in ORDER else 99, n))


@pytest.fixture(params=HARNESS_NAMES)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    with HARNESS_MODULES[request.param].harness(tmp_path) as made:
        try:
            yield made
        finally:
            made.transport.close()


@pytest.fixture
def transport(harness: Harness) -> Transport:
    return harness.transport


@pytest.fixture
def queue() -> str:
    """A queue name no other test uses."""
    return "t" + uuid.uuid4().hex[:12]
