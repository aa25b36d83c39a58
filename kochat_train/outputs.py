"""A stage's output directory: its layout, making it ready (or finding the checkpoint to resume), and saving.

A finished stage directory holds the `save_pretrained` model and tokenizer, `kochat_config.json`
(the resolved config), `metrics.jsonl` (every train/eval log line) and, written last,
`kochat_stage.json` (final metrics); `checkpoints/` holds the checkpoints `--resume` reads.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.trainer import TRAINER_STATE_NAME

from kochat_data.atomic import check_writable
from kochat_data.errors import UsageError
from kochat_train.config import TrainConfig
from kochat_train.devices import resolve_device
from kochat_train.distributed import barrier, init_distributed, is_main_process
from kochat_train.lora import merge_lora
from kochat_train.sharding import describe as describe_sharding
from kochat_train.sharding import is_sharded
from kochat_train.template import CONFIG_FILE

METRICS_FILE = "metrics.jsonl"
STAGE_FILE = "kochat_stage.json"
CHECKPOINTS = "checkpoints"


def prepare_output(config: TrainConfig) -> str | None:
    """Join torchrun's process group if any, and make `config.out` ready (rank 0 only);
    returns the checkpoint to resume from, if resuming."""
    init_distributed(resolve_device(config.device))
    out = Path(config.out)
    if config.resume:
        checkpoints = out / CHECKPOINTS
        last = last_complete_checkpoint(checkpoints)
        if last is None:
            raise UsageError(f"{out}: nothing to resume (no checkpoint under {checkpoints})")
        if is_main_process():
            drop_metrics_after(out / METRICS_FILE, step=int(Path(last).name.rsplit("-", 1)[-1]))
            (out / STAGE_FILE).unlink(missing_ok=True)
        barrier()
        return last
    check_writable(out, config.overwrite)
    barrier()  # every rank has checked before rank 0 clears the directory
    if is_main_process():
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
    barrier()
    return None


def last_complete_checkpoint(checkpoints: Path) -> str | None:
    """The newest Trainer checkpoint that was written to the end.

    The Trainer writes `trainer_state.json` last; a run killed while saving leaves a newer
    checkpoint directory without it, which `get_last_checkpoint` would pick.
    """
    complete = [path for path in checkpoints.glob("checkpoint-*") if (path / TRAINER_STATE_NAME).is_file()] if checkpoints.is_dir() else []
    return str(max(complete, key=lambda path: int(path.name.rsplit("-", 1)[-1]))) if complete else None


def drop_metrics_after(path: Path, step: int) -> None:
    """Forget log lines of the interrupted run past the checkpoint: they will be logged again.
    A kill can cut the last line mid-write; a line that does not parse is that torn tail."""
    if path.exists():
        kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _step_of(line) is not None and _step_of(line) <= step]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _step_of(line: str) -> int | None:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None


def append_metrics(path: Path, line: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(line, ensure_ascii=False) + "\n")


def write_config(out: Path, stage: str, config: TrainConfig) -> None:
    if not is_main_process():
        return
    text = json.dumps({"stage": stage, **config.to_json()}, indent=2, ensure_ascii=False) + "\n"
    (out / CONFIG_FILE).write_text(text, encoding="utf-8")


@dataclass
class StageResult:
    out: Path
    metrics: dict[str, Any]


def save_model(model: PreTrainedModel, out: Path) -> None:
    """`save_pretrained` by rank 0; a sharded model is gathered by transformers from every process (a collective call)."""
    if is_sharded(model):
        model.save_pretrained(out, is_main_process=is_main_process())
    elif is_main_process():
        model.save_pretrained(out)


def save_stage(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: TrainConfig, stage: str, metrics: dict[str, Any],
               reads_template: bool = True) -> StageResult:
    """Write the plain-transformers model (LoRA merged) and tokenizer, then mark the stage finished (rank 0).
    The tokenizer keeps the chat template the stage trained with (`stage_tokenizer`); an encoder RM, which reads
    text pairs (`reads_template` False), is saved without one."""
    out = Path(config.out)
    merge_lora(model)
    if not reads_template:
        tokenizer.chat_template = None
    if is_sharded(model):
        metrics = {**metrics, "sharding": describe_sharding(model)}
    save_model(model, out)
    if is_main_process():
        tokenizer.save_pretrained(out)
        finite = {key: value for key, value in metrics.items() if not (isinstance(value, float) and not math.isfinite(value))}
        (out / STAGE_FILE).write_text(json.dumps({"stage": stage, "metrics": finite}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    barrier()
    return StageResult(out, metrics)
