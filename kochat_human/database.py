"""The label store's file: its SQLite schema, how a new one is written, and one transaction's shape."""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kochat_human.store import Item

DATABASE = "label.sqlite"
SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (
    id TEXT PRIMARY KEY,
    position INTEGER NOT NULL UNIQUE,
    prompt TEXT NOT NULL,
    prompt_messages TEXT NOT NULL,          -- the prompt's conversation as JSON, or '' for a lone question
    completions TEXT NOT NULL,              -- JSON list of the answers
    sources TEXT                            -- JSON list: the stage that wrote each answer, or NULL
);
CREATE TABLE annotators (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, token TEXT NOT NULL UNIQUE, invited_at REAL NOT NULL);
CREATE TABLE assignments (
    annotator INTEGER NOT NULL REFERENCES annotators(id),
    item TEXT NOT NULL REFERENCES items(id),
    shown_order TEXT NOT NULL,              -- JSON: the answer (index into completions) at each place on the screen
    assigned_at REAL NOT NULL,
    touched_at REAL NOT NULL,               -- assigned or reopened by an undo: the newest open one is shown first
    outcome TEXT,                           -- NULL while open, else the kind of its vote
    PRIMARY KEY (annotator, item)
);
CREATE INDEX assignments_by_item ON assignments(item, outcome);
CREATE TABLE votes (
    id INTEGER PRIMARY KEY,
    annotator INTEGER NOT NULL REFERENCES annotators(id),
    item TEXT NOT NULL REFERENCES items(id),
    kind TEXT NOT NULL CHECK (kind IN ('rank', 'skip', 'flag')),
    ranking TEXT,                           -- JSON: the rank of each answer (competition ranks, 0 = best), for 'rank'
    shown_order TEXT NOT NULL,
    seconds REAL,                           -- time on the item as the page measured it
    client_vote_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    retracted_at REAL,                      -- set by an undo; the row stays
    UNIQUE (annotator, client_vote_id)
);
"""



def create_database(path: Path, items: Sequence[Item], seed: int, annotators_per_item: int) -> None:
    """A new store holding `items`, with the project's seed, quota of people per item and admin token."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript("BEGIN;" + SCHEMA + "COMMIT;")
        with transaction(connection):
            connection.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("schema", SCHEMA_VERSION), ("seed", str(seed)), ("annotators_per_item", str(annotators_per_item)),
                ("admin_token", secrets.token_urlsafe(24))])
            connection.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", [
                (item.id, item.position, item.prompt, item.prompt_messages, json.dumps(item.completions, ensure_ascii=False),
                 None if item.sources is None else json.dumps(item.sources, ensure_ascii=False)) for item in items])
    finally:
        connection.close()



@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[None]:
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
