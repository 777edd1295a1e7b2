"""Shared test plumbing.  tests/ is on sys.path, so tests import helpers with ``from support import ...``."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that restart a shared server (files ``test_*_restart.py``) last.

    They disturb every client of that server for a few seconds; last, nothing else is running.
    """
    items.sort(key=lambda item: item.path.name.endswith("_restart.py"))
