"""The exit codes of both commands, ``asynctask-workers`` and ``asynctask``: a number means one thing.

====  ====================  ==================================================================================
0     ``EXIT_OK``           done; ``asynctask-workers``: halted when empty, or stopped by a signal with every
                            task finished (also "no workers configured")
1     ``EXIT_ERROR``        ``asynctask-workers``: an unexpected internal error (a traceback was logged)
1     ``EXIT_FAILURE``      ``asynctask``: the command ran but found a problem (``doctor``), ``--partial``
                            skipped bad lines, the answer at a confirmation was not "yes", or the transport
                            cannot do what was asked
2     ``EXIT_USAGE``        bad usage, input or configuration (one line on stderr; argparse uses 2 too)
3     ``EXIT_UNAVAILABLE``  the transport cannot be reached or opened
4     ``EXIT_FORCED``       ``asynctask-workers``: shutdown forced (second signal or grace period over):
                            children were killed
5     ``EXIT_NOT_FOUND``    ``asynctask``: unknown queue or dead task id
6     ``EXIT_TRANSPORT``    ``asynctask``: the transport failed an operation for another reason
70    ``EXIT_INTERNAL``     ``asynctask``: an unexpected failure inside asynctask (a bug): EX_SOFTWARE
130   ``EXIT_INTERRUPTED``  ``asynctask``: interrupted by Ctrl-C (128 + SIGINT)
====  ====================  ==================================================================================
"""

from __future__ import annotations

__all__ = [
    "EXIT_ERROR",
    "EXIT_FAILURE",
    "EXIT_FORCED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_TRANSPORT",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_FORCED = 4
EXIT_NOT_FOUND = 5
EXIT_TRANSPORT = 6
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
