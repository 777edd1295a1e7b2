"""Workers: the ``AsyncTaskWorker`` base class and registry, the runner loop and the supervisor.

``from asynctask.workers import AsyncTaskWorker, Retry, Reject`` is all a worker module needs; the
runner (:mod:`asynctask.workers.runner`) and supervisor (:mod:`asynctask.workers.supervisor`) are
imported where they are used.
"""

from asynctask.workers.base import AsyncTaskWorker, Reject, Retry, TaskTimeout, get_worker, registered_workers

__all__ = ["AsyncTaskWorker", "Reject", "Retry", "TaskTimeout", "get_worker", "registered_workers"]
