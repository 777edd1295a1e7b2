"""The dashboard over HTTP, in process (Starlette's TestClient): the guards (bind, credentials, CSRF,
read-only), no password shown anywhere, and the API's pages and actions."""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from asynctask.cli import admin
from asynctask.dashboard.app import create_app
from asynctask.dashboard.security import Credentials
from asynctask.transports import get_transport
from asynctask.transports.base import Transport

TOKEN = "test-csrf-token"
PAGES = ["/", "/queues/emails", "/workers", "/schedules", "/task?id=x"]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def kill(transport: Transport, queue: str, count: int, reason: str = "Traceback ...\nValueError: boom") -> list[str]:
    """``count`` dead letters in ``queue`` (submitted, fetched, dead-lettered), their ids in order."""
    ids = transport.submit_tasks(queue, [{"n": n} for n in range(count)])
    for task in transport.get_tasks(queue, count):
        transport.dead(task, reason)
    return ids


@pytest.fixture
def transport() -> Iterator[Transport]:
    made = get_transport(f"memory://dash{uuid.uuid4().hex[:8]}")
    yield made
    made.close()


def client(transport: Transport, **options: object) -> TestClient:
    app = create_app(transport, sample_s=None, csrf_token=TOKEN, **options)  # type: ignore[arg-type]
    return TestClient(app, base_url="http://127.0.0.1:8181")


# -- starting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.0.2.7"])
def test_refuses_to_bind_beyond_loopback_without_auth(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = admin.main(["--transport", "memory://", "dashboard", "--bind", address])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "--auth" in err and address in err, err


def test_bad_auth_value_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert admin.main(["--transport", "memory://", "dashboard", "--auth", "nocolon"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "USER:PASSWORD" in err


def test_a_port_taken_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert admin.main(["--transport", "memory://", "dashboard", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err, err


# -- guards -------------------------------------------------------------------------------------------


def test_without_auth_only_loopback_host_names_and_no_framing(transport: Transport) -> None:
    app = create_app(transport, sample_s=None, csrf_token=TOKEN)
    with TestClient(app, base_url="http://evil.example:8181") as http:
        answer = http.get("/api/queues")
        assert answer.status_code == 403 and "loopback" in answer.json()["error"]
    for host in ("127.0.0.1:8181", "localhost", "[::1]:8181", "127.1.2.3"):
        with TestClient(app, base_url=f"http://{host}") as http:
            answer = http.get("/")
            assert answer.status_code == 200, host
            assert answer.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    with TestClient(
        create_app(transport, sample_s=None, credentials=Credentials("u", "p")), base_url="http://dash.example"
    ) as http:
        assert http.get("/api/queues", headers=basic("u", "p")).status_code == 200  # with --auth: any name


def test_auth_401_without_or_with_wrong_credentials(transport: Transport) -> None:
    kill(transport, "emails", 1)
    with client(transport, credentials=Credentials("admin", "pw:with:colons")) as http:
        for path in [*PAGES, "/api/queues", "/static/dashboard.js"]:
            answer = http.get(path)
            assert answer.status_code == 401, path
            assert answer.headers["www-authenticate"].startswith("Basic")
        assert http.get("/api/queues", headers=basic("admin", "wrong")).status_code == 401
        assert http.get("/api/queues", headers=basic("other", "pw:with:colons")).status_code == 401
        assert http.get("/api/queues", headers={"Authorization": "Basic !!!"}).status_code == 401
        assert http.post("/api/queues/emails/dead/replay", headers={"X-CSRF-Token": TOKEN}).status_code == 401
        good = basic("admin", "pw:with:colons")
        assert http.get("/api/queues", headers=good).json()["queues"][0]["dead"] == 1
        assert http.get("/static/dashboard.css", headers=good).status_code == 200


def test_post_needs_the_csrf_token(transport: Transport) -> None:
    kill(transport, "emails", 2)
    with client(transport) as http:
        url = "/api/queues/emails/dead/replay"
        assert http.post(url).status_code == 403
        assert http.post(url, headers={"X-CSRF-Token": "wrong"}).status_code == 403
        assert http.post(url, data={"csrf_token": "wrong"}).status_code == 403
        assert http.put(url, headers={"X-CSRF-Token": TOKEN}).status_code == 405
        assert transport.stats("emails").dead == 2  # nothing replayed
        answer = http.post(url, headers={"X-CSRF-Token": TOKEN}, json={"ids": []})
        assert answer.json() == {"queue": "emails", "replayed": 0}
        # A plain HTML form (no script): the token as a field, a redirect back to the queue's page.
        answer = http.post(url, data={"csrf_token": TOKEN}, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/queues/emails"
        assert transport.stats("emails").dead == 0 and transport.stats("emails").ready == 2
        # The page carries the token for its script and its forms.
        assert f'content="{TOKEN}"' in http.get("/queues/emails").text


def test_purge_needs_confirmation(transport: Transport) -> None:
    ids = kill(transport, "emails", 3)
    with client(transport) as http:
        url = "/api/queues/emails/dead/purge"
        headers = {"X-CSRF-Token": TOKEN}
        assert http.post(url, headers=headers, json={"ids": ids[:1]}).status_code == 400
        assert http.post(url, headers=headers, json={"ids": ids[:1], "confirm": "yes"}).json()["purged"] == 1
        assert http.post(url, headers=headers, data={"confirm": "yes"}).status_code == 200
        assert transport.stats("emails").dead == 0


def test_read_only_shows_no_buttons_and_refuses_posts(transport: Transport) -> None:
    kill(transport, "emails", 1)
    with client(transport, read_only=True) as http:
        for path in PAGES:
            html = http.get(path).text
            assert "<button" not in html and 'method="post"' not in html, path
            assert 'data-read-only="1"' in html
        for action in ("replay", "purge"):
            answer = http.post(f"/api/queues/emails/dead/{action}", headers={"X-CSRF-Token": TOKEN})
            assert answer.status_code == 403 and "read-only" in answer.json()["error"]
        assert transport.stats("emails").dead == 1
    with client(transport) as http:  # the same page, not read-only, has its buttons
        html = http.get("/queues/emails").text
        assert "Replay all" in html and 'method="post"' in html and 'data-read-only="0"' in html


# -- the API ------------------------------------------------------------------------------------------


def test_queues_paginated_and_dead_letters_paged(transport: Transport) -> None:
    for n in range(120):
        transport.submit_task(f"q{n:03d}", {})
    ids = kill(transport, "zdead", 130)
    with client(transport) as http:
        page = http.get("/api/queues", params={"page": 2}).json()
        assert (page["page"], page["pages"], page["total"], page["per_page"]) == (2, 3, 121, 50)
        assert [q["queue"] for q in page["queues"]] == [f"q{n:03d}" for n in range(50, 100)]
        assert set(page["queues"][0]) == {"queue", "ready", "delayed", "in_flight", "dead", "oldest_ready_age_s"}
        assert http.get("/api/queues", params={"prefix": "q11"}).json()["total"] == 10
        assert http.get("/api/queues", params={"page": 9}).status_code == 400
        assert http.get("/api/queues", params={"per_page": "x"}).status_code == 400
        assert http.get("/api/queues/zdead").json()["dead"] == 130
        assert http.get("/api/queues/nope").status_code == 404
        assert http.get("/api/queues/bad%20name").status_code == 400
        seen: list[str] = []
        after = ""
        while True:
            answer = http.get("/api/queues/zdead/dead", params={"after": after, "limit": 50}).json()
            seen += [d["id"] for d in answer["dead"]]
            after = answer["next"]
            if not after:
                break
        assert len(seen) == len(ids) == 130 and set(seen) == set(ids)  # each once
        first = http.get("/api/queues/zdead/dead", params={"limit": 1}).json()["dead"][0]
        assert first["reason"].endswith("ValueError: boom") and "n" in first["payload"] and first["attempts"] == 1


def test_task_by_id_and_workers_and_history(transport: Transport) -> None:
    with client(transport) as http:
        answer = http.get("/api/tasks/nope")
        assert answer.status_code == 404 and answer.json()["status"] == "unknown"
        assert http.get("/api/workers").json() == {"available": True, "error": None, "supervisors": []}
        schedules = http.get("/api/schedules").json()
        assert schedules["available"] is False and schedules["schedules"] == []
        assert http.get("/api/history").json()["samples"] == []


def test_sampler_history_survives_page_loads(transport: Transport) -> None:
    transport.submit_tasks("emails", [{}, {}])
    app = create_app(transport, sample_s=0.05, csrf_token=TOKEN)
    with TestClient(app, base_url="http://localhost:8181") as http:
        state = app.state.dashboard
        assert state.sampler is not None
        state.sampler.sample_once()
        samples = http.get("/api/history").json()["samples"]
        assert samples and samples[-1]["ready"] == 2 and samples[-1]["queues"] == 1
        assert http.get("/api/history", params={"queue": "emails"}).json()["samples"][-1]["ready"] == 2


# -- no password anywhere -------------------------------------------------------------------------


def test_no_password_in_any_page_or_answer(tmp_path: object) -> None:
    from support import PGSQL_HOST, PGSQL_PORT, require_service

    require_service("PostgreSQL", PGSQL_HOST, PGSQL_PORT)
    schema = f"asynctask_dash_{uuid.uuid4().hex[:10]}"
    secret = "s3cret-Pw"  # the server trusts loopback: any password opens it
    url = f"postgresql://postgres:{secret}@127.0.0.1:5432/test?schema={schema}"
    transport = get_transport(url)
    try:
        ids = kill(transport, "emails", 2)
        app = create_app(transport, sample_s=0.05, csrf_token=TOKEN)
        with TestClient(app, base_url="http://[::1]:8181") as http:
            app.state.dashboard.sampler.sample_once()
            paths = [*PAGES, "/api/about", "/api/queues", "/api/queues/emails", "/api/queues/emails/dead"]
            paths += ["/api/history", "/api/workers", "/api/schedules", f"/api/tasks/{ids[0]}", "/api/queues/nope"]
            for path in paths:
                answer = http.get(path)
                assert answer.status_code in (200, 404), path
                assert secret not in answer.text, path
            shown = http.get("/api/about").json()["transport"]
            assert "postgres:" in shown and "127.0.0.1:5432" in shown and re.search(r"\*\*\*|xxx", shown), shown
    finally:
        transport.close()
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.close()


def test_sampler_throughput_from_the_registry_counters(transport: Transport) -> None:
    from asynctask.dashboard.sampler import Sampler

    children = [{"slot": 0, "pid": 10, "done": 100, "failed": 1, "started_at": 0.0}]
    records: list[dict[str, object]] | None = [{"id": "s1", "children": children}]
    sampler = Sampler(transport, lambda t: records, interval_s=1)
    assert sampler.sample_once().done_per_s is None  # one pass: no rate yet
    children[0].update(done=130, failed=4)
    second = sampler.sample_once()
    assert second.done_per_s is not None and second.done_per_s > 0 and second.failed_per_s is not None
    rate_window = 30 / second.done_per_s  # seconds between the passes, as the sampler saw them
    assert 3 / rate_window == pytest.approx(second.failed_per_s, rel=0.01)
    # A child restarted (counter went down) counts from 0; a new child started before the last
    # pass adds nothing; without a registry there is no rate.
    children[0].update(done=5, failed=0)
    children.append({"slot": 1, "pid": 11, "done": 1000, "failed": 0, "started_at": 0.0})
    third = sampler.sample_once()
    assert third.done_per_s is not None and third.done_per_s > 0
    assert sampler.sample_once().done_per_s == 0  # nothing moved
    # A child started after the first pass, first seen with counts: all of them are new.
    children.append({"slot": 2, "pid": 12, "done": 7, "failed": 0, "started_at": time.time()})
    fourth = sampler.sample_once()
    assert fourth.done_per_s is not None and fourth.done_per_s > 0
    records = None
    assert sampler.sample_once().done_per_s is None
