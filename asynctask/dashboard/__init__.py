"""``asynctask dashboard``: a web page of the queues, dead letters, workers, schedules and tasks.

Installed with the ``dashboard`` extra: Starlette (the ASGI application: routes, static files,
middleware; small, typed and well kept; its synchronous endpoints run in a thread pool, which suits
the blocking transports), uvicorn (the HTTP server) and Jinja2 (the page templates).  Every asset
(templates, CSS, the page script, plain JavaScript) ships in this package: nothing is loaded from
the network.

* :mod:`asynctask.dashboard.app`: the application (:func:`~asynctask.dashboard.app.create_app`),
  its pages and its JSON API under ``/api/``;
* :mod:`asynctask.dashboard.api`: what the pages and the API show, built with the admin CLI's own
  builders, paginated;
* :mod:`asynctask.dashboard.sampler`: the chart's history, sampled by the dashboard process;
* :mod:`asynctask.dashboard.security`: bind check, HTTP Basic credentials, CSRF token, read-only.

The command itself is :mod:`asynctask.cli.admin_dashboard`.
"""
