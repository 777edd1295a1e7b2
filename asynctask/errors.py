"""The one error tree of asynctask.

Every class's docstring is its default message, so ``raise QueueNameError()`` still says something
useful; the raising code normally passes a message that names the bad value and what is allowed.
Driver exceptions (redis-py, psycopg2, pika, OS errors) are translated into this tree inside the
transport that met them, so callers catch ``TransportError`` whatever the transport.
"""

from __future__ import annotations


class AsyncTaskError(Exception):
    """An asynctask operation failed."""

    def __init__(self, message: str | None = None) -> None:
        if message is None:
            message = (type(self).__doc__ or type(self).__name__).strip().splitlines()[0]
        super().__init__(message)

    @property
    def message(self) -> str:
        """The one-line text the CLI prints."""
        return str(self.args[0]) if self.args else ""


class ConfigurationError(AsyncTaskError):
    """The configuration is not valid."""


class QueueNameError(ConfigurationError, ValueError):
    """A queue name must be 2 to 100 characters: a lowercase letter first, then lowercase letters, digits and single underscores, ending with a letter or digit."""  # noqa: E501


class PayloadError(AsyncTaskError, ValueError):
    """A task payload must be a JSON object (a dict with string keys) or None."""


class TransportURLError(ConfigurationError, ValueError):
    """The transport URL is not valid."""


class UnknownTransportError(TransportURLError):
    """The transport URL has a scheme that no installed transport handles."""


class UnknownWorkerError(ConfigurationError, LookupError):
    """No worker is registered under that name."""


class ScheduleError(ConfigurationError):
    """A scheduled worker entry is not valid."""


class TransportError(AsyncTaskError):
    """The transport failed to carry out an operation."""


class TransportUnavailableError(TransportError, ConnectionError):
    """The transport's server cannot be reached."""


class TaskDecodeError(AsyncTaskError, ValueError):
    """A stored task body could not be decoded."""


class TaskFailedError(AsyncTaskError):
    """The task failed: its last attempt raised (the error it raised is in the message)."""

    def __init__(self, message: str | None = None, *, error_type: str = "", error_message: str = "") -> None:
        super().__init__(message)
        #: the remote exception's type name and message
        self.error_type, self.error_message = error_type, error_message


class TaskCancelledError(AsyncTaskError):
    """The task was cancelled before it ran."""


class ResultUnavailableError(AsyncTaskError):
    """No result is stored for this task: it keeps none (no result_ttl_s), its result expired, or the id is unknown."""
