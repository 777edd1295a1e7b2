"""asynctask: background jobs for Python on a directory, Redis, PostgreSQL or RabbitMQ.

The public names, re-exported; docs/architecture.rst maps the modules.
"""

from asynctask.errors import (
    AsyncTaskError,
    ConfigurationError,
    PayloadError,
    QueueNameError,
    ResultUnavailableError,
    TaskCancelledError,
    TaskFailedError,
    TransportError,
    TransportUnavailableError,
    TransportURLError,
    UnknownTransportError,
)
from asynctask.message import DeadTask, QueueStats, Task
from asynctask.results import TaskHandle
from asynctask.schedules import cron_task, periodic_task
from asynctask.tasks import task
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
    "ResultUnavailableError",
    "Retry",
    "Task",
    "TaskCancelledError",
    "TaskFailedError",
    "TaskHandle",
    "Transport",
    "TransportError",
    "TransportURLError",
    "TransportUnavailableError",
    "UnknownTransportError",
    "cron_task",
    "get_transport",
    "periodic_task",
    "task",
]

__version__ = "0.1.0.dev0"
