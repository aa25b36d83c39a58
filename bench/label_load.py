"""Load and faults of `kochat label serve`, on loopback only, bounded in count and time.

1. 20 simulated people vote at once, 50 votes each, against a real `kochat label serve` process: vote latency
   (p50/p99, the POST that stores a vote) and the counts in the export (0 lost, 0 counted twice). Twice: with no
   pause between votes (the server saturated: latency is mostly the queue of 20 waiting requests), and as people
   vote, a pause of 0.5–1.5 s before each vote (about 20 votes/s offered in all).
2. The paced run again with `kill -9` of the server after about a third of the votes, and a restart: each person
   resends a vote whose answer was lost with the same client vote id, as the page does. Every vote that got a 200
   must be in the export, none twice.

    python bench/label_load.py            # prints the numbers; exits 1 when a vote was lost or doubled
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

PEOPLE, VOTES, DEADLINE_S = 20, 50, 300
ROOT = Path(__file__).resolve().parents[1]


def make_project(scratch: Path) -> tuple[Path, list[str]]:
    candidates = scratch / "candidates.jsonl"
    candidates.write_text("".join(json.dumps({"prompt": f"질문 {n}", "completions": [f"답 {n}-{a}" for a in range(3)]}, ensure_ascii=False) + "\n"
                                  for n in range(VOTES)), encoding="utf-8")
    project = scratch / "project"
    kochat = [sys.executable, "-m", "kochat", "label"]
    subprocess.run([*kochat, "new", "--out", project, "--candidates", candidates, "--annotators-per-item", str(PEOPLE)], check=True,
                   capture_output=True)
    invited = subprocess.run([*kochat, "invite", project, *[f"person{n:02d}" for n in range(PEOPLE)], "--json"], check=True,
                             capture_output=True, text=True).stdout
    return project, [json.loads(line)["token"] for line in invited.splitlines()]


class Server:
    """`kochat label serve` as its own process; `url` is read from what it prints."""

    def __init__(self, project: Path):
        self.project = project
        self.url = None
        self.process = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "kochat", "label", "serve", str(self.project), "--port", "0"],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.process.stdout.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
        if not found:
            raise SystemExit(f"the server did not start: {line}{self.process.stdout.read()}")
        self.url = found.group(1)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(30)


def person(server: Server, token: str, number: int, latencies: list, acked: list, failures: list, deadline: float,
           pause: bool) -> None:
    """Vote VOTES times. As the page does, a vote whose answer never came (the server was killed) is sent again as it
    was, with the same client vote id."""
    headers = {"Authorization": f"Bearer {token}"}
    rng = random.Random(number)
    with httpx.Client(timeout=10) as client:
        for count in range(VOTES):
            if pause:
                time.sleep(rng.uniform(0.5, 1.5))  # reading the answers
            body = None
            while time.monotonic() < deadline:
                try:
                    if body is None:
                        item = client.get(f"{server.url}/api/next", headers=headers).json()["item"]
                        body = {"item": item["id"], "ranking": [count % 3, (count + 1) % 3, (count + 2) % 3],
                                "client_vote_id": f"person{number:02d}-vote{count:03d}", "seconds": 1.0}
                    started = time.perf_counter()
                    response = client.post(f"{server.url}/api/votes", json=body, headers=headers)
                    elapsed = time.perf_counter() - started
                except httpx.TransportError:
                    time.sleep(0.05)  # no server: try again
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text}")
                    return
                latencies.append(elapsed)
                acked.append(body["client_vote_id"])
                break


def run(kill_after: int | None, pause: bool) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        project, tokens = make_project(Path(scratch))
        server = Server(project)
        server.start()
        latencies, acked, failures, deadline = [], [], [], time.monotonic() + DEADLINE_S
        threads = [threading.Thread(target=person, args=(server, token, n, latencies, acked, failures, deadline, pause))
                   for n, token in enumerate(tokens)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        restarted = None
        if kill_after is not None:
            while len(acked) < kill_after and any(thread.is_alive() for thread in threads):
                time.sleep(0.01)
            server.kill()
            killed_at = len(acked)
            time.sleep(0.5)
            server.start()
            restarted = killed_at
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        server.stop()
        if failures:
            raise SystemExit(f"{len(failures)} people stopped at an unexpected answer, e.g. {failures[0]}")
        export = Path(scratch) / "export.jsonl"
        subprocess.run([sys.executable, "-m", "kochat", "label", "export", project, "--out", export], check=True, capture_output=True)
        votes = [json.loads(line) for line in (Path(scratch) / "export.jsonl.votes.jsonl").read_text(encoding="utf-8").splitlines()]
    stored = {vote["client_vote_id"] for vote in votes}
    pairs = [(vote["annotator"], vote["item"]) for vote in votes]
    acked_ids = set(acked)
    latencies.sort()
    return {"pause": "0.5–1.5 s" if pause else "none", "kill -9 after": restarted, "votes acknowledged": len(acked), "votes stored": len(votes),
            "acknowledged but lost": len(acked_ids - stored), "counted twice": len(pairs) - len(set(pairs)),
            "p50 ms": 1000 * statistics.median(latencies), "p99 ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "votes/s": len(latencies) / seconds, "seconds": seconds}


def main() -> int:
    bad = False
    for kill_after, pause in ((None, False), (None, True), (PEOPLE * VOTES // 3, True)):
        result = run(kill_after, pause)
        print(json.dumps(result, ensure_ascii=False))
        bad |= result["acknowledged but lost"] > 0 or result["counted twice"] > 0 or result["votes stored"] != PEOPLE * VOTES
    return int(bad)


if __name__ == "__main__":
    sys.exit(main())
