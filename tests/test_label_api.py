"""The label server's rules, through FastAPI's TestClient: tokens, assignment, votes counted once, clear errors."""

import json
import sqlite3

import pytest
from fastapi.testclient import TestClient

from label_helpers import make_project

from kochat_human.app import MAX_BODY_BYTES, create_app
from kochat_human.store import DATABASE, shown_order


@pytest.fixture
def served(tmp_path):
    project, store, people = make_project(tmp_path)
    client = TestClient(create_app(project, store), raise_server_exceptions=False)
    return project, store, people, client


def auth(person) -> dict:
    return {"Authorization": f"Bearer {person.token}"}


def vote(client, person, item: str, ranking=(0, 1, 2), vote_id: str = "vote-0001", kind: str = "rank", **extra):
    body = {"item": item, "kind": kind, "client_vote_id": vote_id, "seconds": 3.5, **extra}
    if kind == "rank":
        body["ranking"] = list(ranking)
    return client.post("/api/votes", json=body, headers=auth(person))


def test_every_call_checks_the_token(served):
    _, store, people, client = served
    assert client.get("/api/next").status_code == 401
    assert client.get("/api/next", headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    assert client.get("/api/next", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.post("/api/votes", json={}).status_code == 401
    assert client.get("/label/not-a-token").status_code == 401
    page = client.get(f"/label/{people['민지'].token}")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    # status and export over HTTP need the admin token: a person's token is forbidden
    assert client.get("/api/admin/status", headers=auth(people["민지"])).status_code == 403
    assert client.get("/api/admin/status").status_code == 401
    admin = {"Authorization": f"Bearer {store.admin_token}"}
    assert client.get("/api/admin/status", headers=admin).json()["items"] == 6
    assert client.get("/api/next", headers=admin).status_code == 401  # the admin ranks nothing


def test_each_item_goes_to_n_different_people_and_a_person_who_comes_back_goes_on(served):
    _, store, people, client = served
    first = client.get("/api/next", headers=auth(people["민지"])).json()
    again = client.get("/api/next", headers=auth(people["민지"])).json()
    assert first["item"]["id"] == again["item"]["id"] and first["item"]["answers"] == again["item"]["answers"]
    seen = {name: [] for name in people}
    for round_ in range(6):
        for number, (name, person) in enumerate(people.items()):
            shown = client.get("/api/next", headers=auth(person)).json()["item"]
            if shown is None:
                continue
            seen[name].append(shown["id"])
            assert vote(client, person, shown["id"], vote_id=f"person{number}-round{round_}").status_code == 200
    for ids in seen.values():
        assert len(ids) == len(set(ids))  # nobody sees an item twice
    per_item = {}
    for ids in seen.values():
        for item in ids:
            per_item[item] = per_item.get(item, 0) + 1
    assert per_item == {item.id: 2 for item in store.items()}  # 6 items × 2 people, no third
    final = client.get("/api/next", headers=auth(people["민지"])).json()
    assert final["item"] is None and final["progress"]["done"] == final["progress"]["total"] == len(seen["민지"])


def test_the_order_shown_is_shuffled_per_person_and_stored(served):
    _, store, people, client = served
    orders = {}
    for name, person in people.items():
        shown = client.get("/api/next", headers=auth(person)).json()["item"]
        orders[name] = shown["answers"]
    items = store.items()
    assert len({tuple(shown_order(store.seed, f"person {n}", items[0].id, 3)) for n in range(20)}) > 1  # shuffled per person
    assert shown_order(store.seed, "민지", items[0].id, 3) == shown_order(store.seed, "민지", items[0].id, 3)
    # what the store says each person was shown is what they got
    db = sqlite3.connect(store.path)
    for (name, order_json, item_id) in db.execute("SELECT a.name, s.shown_order, s.item FROM assignments s JOIN annotators a ON a.id = s.annotator"):
        completions = next(item.completions for item in items if item.id == item_id)
        assert [completions[answer] for answer in json.loads(order_json)] == orders[name]


def test_a_vote_is_committed_mapped_to_the_answers_and_counted_once(served):
    _, store, people, client = served
    person = people["민지"]
    shown = client.get("/api/next", headers=auth(person)).json()["item"]
    response = vote(client, person, shown["id"], ranking=[2, 0, 1])  # the second answer on the screen is best
    assert response.status_code == 200 and response.json()["stored"] is True
    again = vote(client, person, shown["id"], ranking=[2, 0, 1])  # the page resent it
    assert again.status_code == 200 and again.json()["stored"] is False
    rows = sqlite3.connect(store.path).execute("SELECT ranking, shown_order FROM votes").fetchall()  # another connection sees it
    assert len(rows) == 1
    ranking, order = json.loads(rows[0][0]), json.loads(rows[0][1])
    assert [ranking[answer] for answer in order] == [2, 0, 1]
    assert vote(client, person, shown["id"], vote_id="vote-0002").status_code == 409  # a second vote needs an undo first


def test_undo_reopens_the_item_once(served):
    _, store, people, client = served
    person = people["준호"]
    first = client.get("/api/next", headers=auth(person)).json()["item"]
    vote(client, person, first["id"], vote_id="first-vote")
    second = client.get("/api/next", headers=auth(person)).json()
    assert second["item"]["id"] != first["id"] and second["last_vote"] == "first-vote"
    undo = client.post("/api/undo", json={"client_vote_id": "first-vote"}, headers=auth(person))
    assert undo.status_code == 200 and undo.json()["undone"] is True
    assert client.post("/api/undo", json={"client_vote_id": "first-vote"}, headers=auth(person)).json()["undone"] is False
    back = client.get("/api/next", headers=auth(person)).json()
    assert back["item"]["id"] == first["id"] and back["last_vote"] is None  # shown again, to rank anew
    assert store.votes() == []
    assert sqlite3.connect(store.path).execute("SELECT COUNT(*) FROM votes WHERE retracted_at IS NOT NULL").fetchone() == (1,)
    assert client.post("/api/undo", json={"client_vote_id": "never-made"}, headers=auth(person)).status_code == 404
    other = people["서연"]
    assert client.post("/api/undo", json={"client_vote_id": "first-vote"}, headers=auth(other)).status_code == 404


@pytest.mark.parametrize("body, status, needle", [
    ('{"item": "x", ', 400, "not valid JSON"),
    ('[1, 2]', 422, "body"),
    ('{"item": "ITEM", "ranking": [0, 1], "client_vote_id": "vote-0001"}', 422, "expected 3 integers"),
    ('{"item": "ITEM", "ranking": [0, 1, 3], "client_vote_id": "vote-0001"}', 422, "0 … 2"),
    ('{"item": "ITEM", "ranking": [0, 1, -1], "client_vote_id": "vote-0001"}', 422, "0 … 2"),
    ('{"item": "ITEM", "ranking": [true, 0, 1], "client_vote_id": "vote-0001"}', 422, "ranking"),
    ('{"item": "ITEM", "ranking": ["0", 1, 2], "client_vote_id": "vote-0001"}', 422, "ranking"),
    ('{"item": "ITEM", "ranking": [0, 1, 2], "client_vote_id": "../../x"}', 422, "client_vote_id"),
    ('{"item": "ITEM", "ranking": [0, 1, 2]}', 422, "client_vote_id"),
    ('{"item": "ITEM", "kind": "skip", "ranking": [0, 1, 2], "client_vote_id": "vote-0001"}', 422, "carries no ranking"),
    ('{"item": "ITEM", "kind": "rank", "client_vote_id": "vote-0001"}', 422, "required"),
    ('{"item": "ITEM", "kind": "burn", "client_vote_id": "vote-0001"}', 422, "kind"),
    ('{"item": "ITEM", "ranking": [0, 1, 2], "client_vote_id": "vote-0001", "seconds": -4}', 422, "seconds"),
    ('{"item": "ITEM", "ranking": [0, 1, 2], "client_vote_id": "vote-0001", "admin": true}', 422, "admin"),
    ('{"item": "NOT-MINE", "ranking": [0, 1, 2], "client_vote_id": "vote-0001"}', 403, "not assigned to you"),
])
def test_bad_votes_get_a_clear_json_error_never_a_500(served, body, status, needle):
    _, store, people, client = served
    person = people["민지"]
    item = client.get("/api/next", headers=auth(person)).json()["item"]["id"]
    not_mine = next(other.id for other in store.items() if other.id != item)
    response = client.post("/api/votes", content=body.replace("NOT-MINE", not_mine).replace("ITEM", item),
                           headers={**auth(person), "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]
    assert store.votes() == []


def test_a_body_over_the_cap_is_refused_before_it_is_read(served):
    _, store, people, client = served
    person = people["민지"]
    item = client.get("/api/next", headers=auth(person)).json()["item"]["id"]
    huge = json.dumps({"item": item, "ranking": [0, 1, 2], "client_vote_id": "vote-0001", "pad": "가" * MAX_BODY_BYTES})
    response = client.post("/api/votes", content=huge, headers={**auth(person), "Content-Type": "application/json"})
    assert response.status_code == 413 and "bytes" in response.json()["error"]

    def chunks():  # no Content-Length: the cap counts what arrives
        yield b'{"item": "' + item.encode() + b'", "pad": "'
        for _ in range(8):
            yield b"x" * 4096
        yield b'"}'

    streamed = client.post("/api/votes", content=chunks(), headers={**auth(person), "Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert store.votes() == []


def test_no_request_value_reaches_a_file(served):
    project, _, people, client = served
    for path in ("/static/../label.sqlite", "/static/..%2flabel.sqlite", f"/static/{DATABASE}", "/static/label.html.bak",
                 "/label/../label.sqlite", "/static/%2e%2e%2fmanifest.json"):
        response = client.get(path)
        assert response.status_code in (401, 404), path
        assert b"SQLite" not in response.content and b"annotators_per_item" not in response.content
    assert client.get("/static/label.js").headers["content-type"].startswith("text/javascript")


def test_admin_export_and_status_over_http(served):
    _, store, people, client = served
    for number, (name, person) in enumerate(people.items()):
        item = client.get("/api/next", headers=auth(person)).json()["item"]["id"]
        vote(client, person, item, ranking=[0, 1, 2], vote_id=f"http-vote-{number}")
    admin = {"Authorization": f"Bearer {store.admin_token}"}
    status = client.get("/api/admin/status", headers=admin).json()
    assert status["votes"] == 3 and status["agreement"]["items"] == 1
    lines = client.get("/api/admin/export?format=kochatgpt", headers=admin).text.splitlines()
    assert len(lines) == 2 and all("ranking" in json.loads(line) for line in lines)  # 민지 and 준호 share item 1; 서연 has item 2
    assert len(client.get("/api/admin/export?format=votes", headers=admin).text.splitlines()) == 3
    assert client.get("/api/admin/export?format=../../etc", headers=admin).status_code == 422


def test_serve_prints_every_link_refuses_a_second_server_and_stops_on_ctrl_c(tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys
    import urllib.request

    project, store, people = make_project(tmp_path)
    command = [sys.executable, "-m", "kochat", "label", "serve", str(project), "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = [server.stdout.readline() for _ in range(len(people) + 2)]
        address = re.search(r"at (http://127\.0\.0\.1:\d+) ", lines[0]).group(1)
        for person in people.values():
            assert any(line.strip() == f"{person.name}: {address}/label/{person.token}" for line in lines)
        assert lines[-1].strip() == f"admin token (status and export over HTTP): {store.admin_token}"
        with urllib.request.urlopen(f"{address}/label/{people['민지'].token}") as page:
            assert b"/static/label.js" in page.read()
        second = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and f"already served by `kochat label serve` (pid {server.pid})" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0 and "Traceback" not in err
