"""Where the ``asynctask`` admin command finds its transport and settings.

The same resolution as ``asynctask-workers`` (:func:`asynctask.config.load_settings`): the
``--config FILE`` files (repeatable, merged in order; none given: ``$ASYNCTASK_CONFIG`` or
``./asynctask.yaml``), then ``--set NAME=VALUE``, then the environment (``ASYNCTASK_TRANSPORT``),
else the embedded default.  ``--transport URL`` beats them all; with it, a configuration that does
not load is only a warning (the command does not need it), except for ``doctor``, which reports it
(and, without ``--transport``, checks no transport: the one the configuration names is unknown).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from asynctask.config import Settings, load_settings, parse_set_option
from asynctask.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: The source of the transport URL when the configuration does not load and none was given.
NO_TRANSPORT = "none: the configuration does not load"


@dataclass
class AdminSettings:
    """What the admin command resolved: the URL, where it came from, and the settings (or why not)."""

    #: "" when the configuration does not load and no ``--transport`` was given
    transport_url: str
    source: str
    settings: Settings | None = None
    error: ConfigurationError | None = None


def resolve(
    transport: str | None,
    config_files: Sequence[str],
    set_items: Sequence[str],
    require: Sequence[str] = (),
    *,
    keep_error: bool = False,
) -> AdminSettings:
    """Resolve the transport URL and the settings (see the module docstring for the order).

    Raises :class:`ConfigurationError` when the configuration does not load, unless ``--transport``
    was given or ``keep_error`` (then the error is kept in ``AdminSettings.error``).
    """
    try:
        settings = load_settings(
            list(config_files) or None, [parse_set_option(item) for item in set_items], require=require
        )
    except ConfigurationError as exc:
        if not (transport or keep_error):
            raise
        if transport:
            if not keep_error:
                logger.info("configuration ignored (--transport given): %s", exc.message)
            return AdminSettings(transport, "--transport", None, exc)
        return AdminSettings("", NO_TRANSPORT, None, exc)
    if transport:
        return AdminSettings(transport, "--transport", settings)
    origin = settings.origins.get("asynctask_transport") if settings.transport else None
    return AdminSettings(settings.transport_url, origin or "the embedded default", settings)
