"""asynctask: background jobs for Python on a directory, Redis, PostgreSQL or RabbitMQ.

The public names, re-exported; see DESIGN.md for the architecture.
"""

from asynctask.errors import (
    AsyncTaskError,
    ConfigurationError,
    PayloadError,
    QueueNameError,
    TransportError,
    TransportUnavailableError,
    TransportURLError,
    UnknownTransportError,
)
from asynctask.message import DeadTask, QueueStats, Task
from asynctask.transports import get_transport
from asynctask.transports.base import Transport
from asynctask.workers.base import AsyncTaskWorker, Reject, Retry

__all__ = [
    "AsyncTaskError",
    "AsyncTaskWorker",
    "ConfigurationError",
    "DeadTask",
    "PayloadError",
    "QueueNameError",
    "QueueStats",
    "Reject",
    "Retry",
    "Task",
    "Transport",
    "TransportError",
    "TransportURLError",
    "TransportUnavailableError",
    "UnknownTransportError",
    "get_transport",
]

__version__ = "0.1.0.dev0"
