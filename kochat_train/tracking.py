"""Experiment tracking beside metrics.jsonl: TensorBoard or Weights & Biases, both optional extras.

One tracker serves every stage: the Trainer-based stages feed it from a callback, PPO's own loop
calls it directly, so a curve looks the same wherever it was logged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from transformers import TrainerCallback


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    """Scalars under the stage's name, sample completions as a Markdown table, in `--out/tensorboard`."""

    def __init__(self, out: Path, stage: str):
        from torch.utils.tensorboard import SummaryWriter

        self.stage = stage
        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{self.stage}/{key}", value, step)
        self.writer.flush()

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        if rows:
            columns = list(rows[0])
            lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_cell(row[column]) for column in columns) + " |" for row in rows]
            self.writer.add_text(f"{self.stage}/samples", "\n".join(lines), step)
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One W&B run per stage (project from WANDB_PROJECT, default kochat), files under `--out/wandb`."""

    def __init__(self, out: Path, stage: str, config: dict[str, Any]):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "kochat"), name=f"{stage} · {out.name}", dir=str(out),
                              config=config, job_type=stage, reinit="finish_previous")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({key: value for key, value in metrics.items() if isinstance(value, (int, float))}, step=step)

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        if rows:
            columns = list(rows[0])
            self.run.log({"samples": self.wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])}, step=step)

    def close(self) -> None:
        self.run.finish()


def open_tracker(kind: str, out: Path, stage: str, config: dict[str, Any]) -> Tracker | None:
    """The tracker a config asked for (its package was checked with the config), or None."""
    if kind == "tensorboard":
        return TensorBoardTracker(out, stage)
    if kind == "wandb":
        return WandbTracker(out, stage, config)
    return None


@contextlib.contextmanager
def closing_tracker(tracker: Tracker | None) -> Iterator[Tracker | None]:
    try:
        yield tracker
    finally:
        if tracker:
            tracker.close()


def sample_rows(prompts: list[str], responses: list[str], scores: list[float], count: int = 4) -> list[dict[str, Any]]:
    """The first `count` (prompt, response, score) of a batch, for a tracker's table of samples."""
    return [{"prompt": p, "response": r, "score": s} for p, r, s in zip(prompts, responses, scores, strict=True)][:count]


class TrackerCallback(TrainerCallback):
    """The Trainer's log lines (train and eval) into the tracker, at the optimizer step they belong to."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.tracker.log(logs, state.global_step)


def _cell(value: Any) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")
