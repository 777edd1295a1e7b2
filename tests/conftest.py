"""Shared test plumbing.  tests/ is on sys.path, so tests import helpers with ``from support import ...``."""
