"""`kochat label status`: how far a project is and how much its people agree, as one dict (the CLI renders it, the
admin API returns it)."""

from __future__ import annotations

import statistics

from kochat_eval.agreement import agreement, first_shares
from kochat_human.store import LabelStore, rankings_and_flags


def project_status(store: LabelStore, resamples: int = 1000) -> dict:
    """Items done (ranked by the N people each needs) of all, each person's progress and median seconds per item,
    skips and flags, agreement over the items ranked by two or more people (with bootstrap CIs), and, when stages
    wrote the answers, how often each stage's answer was ranked first."""
    items = store.items()
    votes = store.votes()
    per_person = {annotator.name: {"name": annotator.name, "ranked": 0, "skips": 0, "flags": 0, "seconds": []} for annotator in store.annotators()}
    rankings, flagged = rankings_and_flags(votes)
    for vote in votes:
        person = per_person[vote.annotator]
        person[{"rank": "ranked", "skip": "skips", "flag": "flags"}[vote.kind]] += 1
        if vote.kind == "rank" and vote.seconds is not None:
            person["seconds"].append(vote.seconds)
    needed = store.annotators_per_item
    people = []
    for person in per_person.values():
        seconds = person.pop("seconds")
        people.append(person | {"median_seconds": statistics.median(seconds) if seconds else None})
    return {
        "items": len(items), "annotators_per_item": needed,
        "items_done": sum(len(rankings[item.id]) >= needed for item in items),
        "items_started": sum(bool(rankings[item.id]) for item in items),
        "votes": sum(person["ranked"] for person in people), "votes_needed": len(items) * needed,
        "skips": sum(person["skips"] for person in people), "flags": sum(person["flags"] for person in people),
        "flagged_items": len(flagged),
        "annotators": people,
        "agreement": agreement([rankings[item.id] for item in items], resamples=resamples),
        "stage_first": stage_first(items, rankings),
    }


def stage_first(items, rankings: dict[str, list]) -> list[dict] | None:
    """Per stage, the share of votes that ranked its answer first (a tie for first shares the credit), when the
    answers came from two or more stages; None otherwise."""
    stages = sorted({stage for item in items for stage in item.sources or []})
    if len(stages) < 2:
        return None
    first, votes = dict.fromkeys(stages, 0.0), dict.fromkeys(stages, 0)
    for item in items:
        for ranking in rankings.get(item.id, []):
            for stage in set(item.sources):
                votes[stage] += 1
            for stage, share in zip(item.sources, first_shares(ranking), strict=True):
                first[stage] += share
    return [{"stage": stage, "first_share": first[stage] / votes[stage] if votes[stage] else None, "votes": votes[stage]}
            for stage in stages]


def json_safe(value):
    """NaN (no agreement to measure yet) as null: JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    return value
