"""Importing the user's modules (``asynctask_require`` / ``--require``) the same way everywhere.

``asynctask-workers`` (and so its children, which inherit ``sys.path``) and ``asynctask doctor``
import the modules that define workers through :func:`import_modules`: from the current directory
first (put at the front of ``sys.path``, as ``python -m`` does), then the usual path.

An import that fails is one line naming the module, the error, and the file and line of the user's
code where it happened: the last frame of the traceback outside the standard library, installed
packages and asynctask itself (for a ``SyntaxError``, the file that does not compile).  The full
traceback is logged at DEBUG (``--log-level debug``).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import sysconfig
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from asynctask.errors import ConfigurationError

__all__ = ["add_working_directory", "describe_import_error", "import_modules", "import_object"]

logger = logging.getLogger(__name__)

#: Directories whose frames are not the user's code: asynctask, the standard library, site-packages.
_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_LIBRARY_DIRS = tuple(
    str(Path(path).resolve())
    for key in ("stdlib", "platstdlib", "purelib", "platlib")
    if (path := sysconfig.get_paths().get(key))
)


def add_working_directory() -> None:
    """Put the current directory first on ``sys.path`` (once), as ``python -m`` does."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def import_modules(modules: Iterable[str]) -> None:
    """Import ``modules`` in order (so their workers register), the current directory first on the path.

    Raises :class:`ConfigurationError` for the first that fails, with :func:`describe_import_error`'s
    line; a ConfigurationError raised by the module itself passes unchanged.
    """
    add_working_directory()
    for module in modules:
        _import(module, "asynctask_require")


def _import(module: str, setting: str) -> Any:
    """``importlib.import_module``; ConfigurationError naming ``setting``, the module and where the
    user's code failed (a ConfigurationError raised by the module itself passes unchanged)."""
    try:
        return importlib.import_module(module)
    except ConfigurationError:
        raise
    except Exception as exc:
        logger.debug("importing %r failed:", module, exc_info=exc)
        raise ConfigurationError(f"{setting}: cannot import module {module!r}: {describe_import_error(exc)}") from None


def import_object(path: str, setting: str) -> object:
    """The object at the dotted ``path`` (``package.module.Name``), the current directory first on
    the path; ConfigurationError naming ``setting`` and the path when it does not import or has no
    such name."""
    add_working_directory()
    module_name, _, name = path.rpartition(".")
    if not module_name or not name:
        raise ConfigurationError(f"{setting}: {path!r} is not a dotted path (package.module.Name is allowed)")
    module = _import(module_name, setting)
    try:
        return getattr(module, name)
    except AttributeError:
        raise ConfigurationError(f"{setting}: module {module_name!r} has no {name!r}") from None


def describe_import_error(exc: BaseException) -> str:
    """``Type: message (file, line N: code)``: the error and where the user's code raised it (the
    location is left out when no frame of the traceback is the user's)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    where = _user_location(exc)
    return f"{text} ({where})" if where else text


def _user_location(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError) and exc.filename and not exc.filename.startswith("<"):
        return _where(exc.filename, exc.lineno, "")
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if _is_source(frame.filename)]
    users = [frame for frame in frames if not _is_library(frame.filename)]
    chosen = users[-1] if users else None
    if chosen is None:
        return ""
    return _where(chosen.filename, chosen.lineno, chosen.line or "")


def _is_source(filename: str) -> bool:
    """A real file that is not asynctask's own (importlib's frozen frames are ``<frozen ...>``)."""
    return not filename.startswith("<") and not _resolved(filename).startswith(_PACKAGE_DIR + os.sep)


def _is_library(filename: str) -> bool:
    path = _resolved(filename)
    return any(path.startswith(directory + os.sep) for directory in _LIBRARY_DIRS)


def _resolved(filename: str) -> str:
    try:
        return str(Path(filename).resolve())
    except OSError:
        return filename


def _where(filename: str, lineno: int | None, line: str) -> str:
    path = _resolved(filename)
    cwd = os.getcwd()
    shown = os.path.relpath(path, cwd) if path.startswith(cwd + os.sep) else path
    text = f"{shown}, line {lineno}" if lineno else shown
    code = " ".join(line.split())
    return f"{text}: {code[:80]}" if code else text
