"""The label store: one SQLite file (stdlib `sqlite3`, WAL) holding a project's items, its annotators, who was
given what in which order, and every vote, skip and flag.

Each request is one transaction (`BEGIN IMMEDIATE`, so two people asking for the last open slot of an item are
served one after the other), committed with `synchronous=FULL` before the server answers: a vote acknowledged is a
vote on disk, whatever happens to the process next. Nothing is deleted: an undone vote is marked retracted.
"""

from __future__ import annotations

import json
import random
import secrets
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kochat_data.errors import UsageError
from kochat_eval.agreement import competition_ranks
from kochat_human.database import DATABASE, SCHEMA_VERSION, transaction

# An item handed to someone who never answers is offered to others again after this long (the slot was theirs).
LEASE_SECONDS = 3600


class Refusal(Exception):
    """A request the store will not carry out, with the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Item:
    id: str
    position: int
    prompt: str
    prompt_messages: str
    completions: list[str]
    sources: list[str] | None


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    token: str


@dataclass(frozen=True)
class Vote:
    annotator: str
    item: str
    kind: str
    ranking: list[int] | None
    shown_order: list[int]
    seconds: float | None
    client_vote_id: str
    created_at: float


def rankings_and_flags(votes: Sequence[Vote]) -> tuple[dict[str, list[list[int]]], set[str]]:
    """Each item's rankings (one per person who ranked it) and the items someone flagged."""
    rankings, flagged = defaultdict(list), set()
    for vote in votes:
        if vote.kind == "rank":
            rankings[vote.item].append(vote.ranking)
        elif vote.kind == "flag":
            flagged.add(vote.item)
    return rankings, flagged


def shown_order(seed: int, annotator: str, item: str, count: int) -> list[int]:
    """The order in which one person sees an item's answers: shuffled, the same every time it is asked for."""
    order = list(range(count))
    random.Random(f"{seed}\0{annotator}\0{item}").shuffle(order)
    return order


class LabelStore:
    """A project's database. Connections are per thread (the web server answers from a thread pool)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"{self.path.parent}: not a label project (no {DATABASE}); make one with `kochat label new`")
        self._local = threading.local()
        # One writer at a time inside the process: threads queue on this lock instead of meeting SQLite's busy handler,
        # whose sleeps (up to 100 ms each) would make the slowest votes slow. Only one server runs per project.
        self._writing = threading.Lock()
        try:
            version = self._connection().execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError as err:
            raise UsageError(f"{self.path}: not a kochat label database ({err})") from None
        if version is None or version[0] != SCHEMA_VERSION:
            raise UsageError(f"{self.path}: a label database of another kochat version (schema {version and version[0]})")
        meta = dict(self._connection().execute("SELECT key, value FROM meta"))
        self.seed, self.annotators_per_item = int(meta["seed"]), int(meta["annotators_per_item"])
        self.admin_token = meta["admin_token"]

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            self._local.connection = connection
        return connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        with self._writing, transaction(connection):
            yield connection

    # Annotators

    def invite(self, names: Sequence[str]) -> list[tuple[Annotator, bool]]:
        """Each name's annotator, created with a fresh unguessable token where new; (annotator, is new)."""
        invited = []
        with self.transaction() as db:
            for name in names:
                row = db.execute("SELECT id, name, token FROM annotators WHERE name = ?", (name,)).fetchone()
                if row is None:
                    token = secrets.token_urlsafe(18)
                    cursor = db.execute("INSERT INTO annotators (name, token, invited_at) VALUES (?, ?, ?)", (name, token, time.time()))
                    invited.append((Annotator(cursor.lastrowid, name, token), True))
                else:
                    invited.append((Annotator(*row), False))
        return invited

    def annotators(self) -> list[Annotator]:
        return [Annotator(*row) for row in self._connection().execute("SELECT id, name, token FROM annotators ORDER BY id")]

    def annotator_by_token(self, token: str) -> Annotator | None:
        row = self._connection().execute("SELECT id, name, token FROM annotators WHERE token = ?", (token,)).fetchone()
        return None if row is None else Annotator(*row)

    # Items and assignment

    def items(self) -> list[Item]:
        rows = self._connection().execute("SELECT id, position, prompt, prompt_messages, completions, sources FROM items ORDER BY position")
        return [_item(row) for row in rows]

    def item(self, item_id: str) -> Item | None:
        row = self._connection().execute(
            "SELECT id, position, prompt, prompt_messages, completions, sources FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else _item(row)

    def next_item(self, annotator: Annotator) -> tuple[Item, list[int]] | None:
        """The item this person should rank now and the order of its answers on their screen: their newest open one
        (a person who comes back goes on where they stopped), else the first item they have not seen that still
        needs people. None when nothing is left for them."""
        now = time.time()
        with self.transaction() as db:
            row = db.execute("SELECT item, shown_order FROM assignments WHERE annotator = ? AND outcome IS NULL "
                             "ORDER BY touched_at DESC LIMIT 1", (annotator.id,)).fetchone()
            if row is not None:
                return self.item(row[0]), json.loads(row[1])
            row = db.execute(f"SELECT id, completions FROM items i WHERE {_OPEN_TO} ORDER BY position LIMIT 1",
                             (annotator.id, now - LEASE_SECONDS, self.annotators_per_item)).fetchone()
            if row is None:
                return None
            order = shown_order(self.seed, annotator.name, row[0], len(json.loads(row[1])))
            db.execute("INSERT INTO assignments VALUES (?, ?, ?, ?, ?, NULL)", (annotator.id, row[0], json.dumps(order), now, now))
        return self.item(row[0]), order

    def progress(self, annotator: Annotator) -> tuple[int, int]:
        """(items this person has answered, those plus what is open or still open to them). Counted over the
        assignments, not the items: the cost grows with the work done, not with the size of the project."""
        db = self._connection()
        done, mine = db.execute("SELECT COUNT(outcome), COUNT(*) FROM assignments WHERE annotator = ?", (annotator.id,)).fetchone()
        items = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        full_to_others = db.execute(
            "SELECT COUNT(*) FROM (SELECT item FROM assignments WHERE outcome IN ('rank', 'flag') OR (outcome IS NULL AND touched_at > ?) "
            "GROUP BY item HAVING COUNT(*) >= ?) WHERE item NOT IN (SELECT item FROM assignments WHERE annotator = ?)",
            (time.time() - LEASE_SECONDS, self.annotators_per_item, annotator.id)).fetchone()[0]
        return done, items - full_to_others

    # Votes

    def record(self, annotator: Annotator, item_id: str, kind: str, screen_ranking: Sequence[int] | None, client_vote_id: str,
               seconds: float | None) -> bool:
        """Store a vote (`kind` rank, skip or flag) on an item assigned to this person; `screen_ranking[p]` is the
        rank of the answer at place p on their screen. False when this client vote id was stored already (a resent
        vote counts once); a Refusal for anything else that cannot be stored."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM votes WHERE annotator = ? AND client_vote_id = ?", (annotator.id, client_vote_id)).fetchone():
                return False
            row = db.execute("SELECT shown_order, outcome FROM assignments WHERE annotator = ? AND item = ?",
                             (annotator.id, item_id)).fetchone()
            if row is None:
                raise Refusal(403, f"item {item_id!r} is not assigned to you")
            if row[1] is not None:
                raise Refusal(409, f"item {item_id!r} already has your {row[1]}; undo it first to change it")
            order = json.loads(row[0])
            ranking = None if kind != "rank" else json.dumps(answer_ranking(checked_ranking(screen_ranking, len(order)), order))
            db.execute("INSERT INTO votes (annotator, item, kind, ranking, shown_order, seconds, client_vote_id, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (annotator.id, item_id, kind, ranking, row[0], seconds, client_vote_id, time.time()))
            db.execute("UPDATE assignments SET outcome = ? WHERE annotator = ? AND item = ?", (kind, annotator.id, item_id))
        return True

    def undo(self, annotator: Annotator, client_vote_id: str) -> bool:
        """Retract one of this person's votes and reopen its item for them (shown next); False when it was retracted
        already (a resent undo undoes once)."""
        with self.transaction() as db:
            row = db.execute("SELECT id, item, retracted_at FROM votes WHERE annotator = ? AND client_vote_id = ?",
                             (annotator.id, client_vote_id)).fetchone()
            if row is None:
                raise Refusal(404, f"no vote {client_vote_id!r} of yours to undo")
            if row[2] is not None:
                return False
            now = time.time()
            db.execute("UPDATE votes SET retracted_at = ? WHERE id = ?", (now, row[0]))
            db.execute("UPDATE assignments SET outcome = NULL, touched_at = ? WHERE annotator = ? AND item = ?", (now, annotator.id, row[1]))
        return True

    def last_vote(self, annotator: Annotator) -> str | None:
        """The client vote id of this person's newest vote that stands (what `u` undoes)."""
        row = self._connection().execute("SELECT client_vote_id FROM votes WHERE annotator = ? AND retracted_at IS NULL "
                                         "ORDER BY id DESC LIMIT 1", (annotator.id,)).fetchone()
        return None if row is None else row[0]

    def votes(self) -> list[Vote]:
        """Every vote, skip and flag that stands (not undone), in the order they were made."""
        rows = self._connection().execute(
            "SELECT a.name, v.item, v.kind, v.ranking, v.shown_order, v.seconds, v.client_vote_id, v.created_at FROM votes v "
            "JOIN annotators a ON a.id = v.annotator WHERE v.retracted_at IS NULL ORDER BY v.id")
        return [Vote(name, item, kind, None if ranking is None else json.loads(ranking), json.loads(order), seconds, vote_id, created)
                for name, item, kind, ranking, order, seconds, vote_id, created in rows]


# An item is open to a person who has not been given it while fewer than N people ranked or flagged it or hold it now.
_OPEN_TO = ("NOT EXISTS (SELECT 1 FROM assignments a WHERE a.item = i.id AND a.annotator = ?) AND "
            "(SELECT COUNT(*) FROM assignments a WHERE a.item = i.id AND (a.outcome IN ('rank', 'flag') OR "
            "(a.outcome IS NULL AND a.touched_at > ?))) < ?")


def checked_ranking(screen_ranking: Sequence[int] | None, count: int) -> Sequence[int]:
    """A ranking of `count` answers as sent: `count` integers, each a rank in 0 … count−1 (equal ranks are ties)."""
    if screen_ranking is None or len(screen_ranking) != count:
        raise Refusal(422, f"ranking: expected {count} integers (one rank per answer, 0 = best), got "
                           f"{'none' if screen_ranking is None else len(screen_ranking)}")
    outside = [rank for rank in screen_ranking if not 0 <= rank < count]
    if outside:
        raise Refusal(422, f"ranking: every rank must be in 0 … {count - 1}, got {outside[0]}")
    return screen_ranking


def answer_ranking(screen_ranking: Sequence[int], order: Sequence[int]) -> list[int]:
    """The rank of each answer (in the item's own order) from the ranks of the places on one person's screen."""
    ranking = [0] * len(order)
    for place, answer in enumerate(order):
        ranking[answer] = screen_ranking[place]
    return competition_ranks(ranking)


def _item(row) -> Item:
    item_id, position, prompt, messages, completions, sources = row
    return Item(item_id, position, prompt, messages, json.loads(completions), None if sources is None else json.loads(sources))
