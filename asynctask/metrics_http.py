"""The HTTP face of :class:`asynctask.metrics.WorkerMetrics`: ``/metrics`` and ``/healthz``.

:func:`serve_http` answers on a daemon thread (one thread per request); see :mod:`asynctask.metrics`
for what the two pages say.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from asynctask.errors import ConfigurationError

if TYPE_CHECKING:  # asynctask.metrics imports this module
    from asynctask.metrics import WorkerMetrics

__all__ = ["serve_http"]

# the metrics' logger: these lines are theirs, wherever the server is written
logger = logging.getLogger("asynctask.metrics")


def serve_http(metrics: WorkerMetrics, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``metrics`` on ``host``:``port`` (0: any free port) on a daemon thread; returns the
    server (``shutdown()``).  ConfigurationError, naming ``--metrics-port`` / ``--metrics-bind``,
    when it cannot listen there."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
            elif path in ("/healthz", "/health"):
                healthy, details = metrics.health()
                self._send(200 if healthy else 503, json.dumps(details).encode(), "application/json")
            else:
                self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("metrics http: " + format, *args)

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise ConfigurationError(
            f"--metrics-port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}"
            " (--metrics-bind takes a local address: 127.0.0.1, 0.0.0.0 or one of this machine's)"
        ) from None
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="asynctask-metrics", daemon=True)
    thread.start()
    logger.info("metrics on http://%s:%d/metrics, health on /healthz", host, server.server_address[1])
    return server
