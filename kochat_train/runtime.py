"""What every stage does around `transformers.Trainer`: output layout, resume, NaN guard, metrics, progress, saving.

A finished stage directory holds the `save_pretrained` model and tokenizer, `kochat_config.json`
(the resolved config), `metrics.jsonl` (every train/eval log line) and, written last,
`kochat_stage.json` (final metrics); `checkpoints/` holds the Trainer checkpoints `--resume` reads.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import PreTrainedModel, PreTrainedTokenizerBase, PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME

from kochat_data.atomic import check_writable
from kochat_data.errors import KochatError, UsageError
from kochat_data.progress import progress_bar
from kochat_train.config import TrainConfig
from kochat_train.lora import apply_lora, merge_lora
from kochat_train.sharding import describe as describe_sharding
from kochat_train.sharding import is_sharded
from kochat_train.devices import resolve_device, uses_bf16
from kochat_train.sources import load_tokenizer, trust_remote_code
from kochat_train.template import CONFIG_FILE, template_of
from kochat_train.tracking import TrackerCallback, closing_tracker, open_tracker

METRICS_FILE = "metrics.jsonl"
STAGE_FILE = "kochat_stage.json"
CHECKPOINTS = "checkpoints"


class TrainingDiverged(KochatError):
    """The loss became NaN/inf; the run stopped before applying that update (exit 3)."""

    exit_code = 3


def init_distributed(device: str) -> None:
    """Join the process group that `torchrun` describes (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA.

    Done before anything touches the output directory, so that only rank 0 writes there;
    the Trainer (through accelerate) finds the group already initialised and uses it.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        # Leave the group before the interpreter tears it down: a gloo group destroyed at exit
        # can abort a rank ("terminate called without an active exception") after its work is done.
        atexit.register(dist.destroy_process_group)


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor summed over every process (itself when there is one)."""
    if not dist.is_initialized():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def gather_objects(value: Any) -> list[Any]:
    """`value` from every process, in rank order (a one-element list without torchrun)."""
    if not dist.is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def mean_over_processes(stats: dict[str, float]) -> dict[str, float]:
    """Each logged number averaged over the processes (throughputs summed: they run side by side)."""
    if not dist.is_initialized():
        return stats
    world = dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    totals = all_reduce_sum(torch.tensor(list(stats.values()), dtype=torch.float64, device=device)).tolist()
    return {key: total if key.endswith("_per_second") else total / world for key, total in zip(stats, totals, strict=True)}


def average_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Data-parallel step by hand, for PPO's own loop: each gradient becomes the mean over processes.

    DistributedDataParallel hooks only the module's forward, while PPO reads the critic
    through `token_values` and samples through `generate`; one flattened all-reduce per
    update does the same job without rewrapping the models.
    """
    if not dist.is_initialized():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for grad, chunk in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        grad.copy_(chunk.view_as(grad))


def broadcast_parameters(modules: Sequence[torch.nn.Module]) -> None:
    """Every process starts from rank 0's weights (LoRA and new heads are initialised randomly); a sharded model's
    shards are each process's own."""
    if dist.is_initialized():
        for module in modules:
            if not is_sharded(module):
                for tensor in module.state_dict().values():
                    dist.broadcast(tensor, src=0)


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


def planned_steps(rows: int, config: TrainConfig, world: int) -> int:
    """Optimizer steps to run: max_steps if set, else -1 (the epochs decide) unless the epochs
    give fewer than min_steps updates, then min_steps."""
    if config.max_steps > 0:
        return config.max_steps
    per_epoch = math.ceil(rows / (config.batch_size * world)) // config.grad_accum
    return config.min_steps if per_epoch * config.epochs < config.min_steps else -1


def training_arguments(config: TrainConfig, train_rows: int, *, remove_unused_columns: bool = True, evaluate: bool = True) -> TrainingArguments:
    """Trainer arguments from a stage config (under torchrun, per process: batch_size is per device)."""
    device = resolve_device(config.device)
    cuda = device == "cuda"
    bf16 = uses_bf16(config, device)
    return TrainingArguments(
        output_dir=str(Path(config.out) / CHECKPOINTS),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs,
        max_steps=planned_steps(train_rows, config, rank_and_world()[1]),
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a share of the steps in transformers 5
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        lr_scheduler_type="linear",
        logging_steps=config.logging_steps,
        eval_strategy="epoch" if evaluate else "no",
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=device == "cpu",
        bf16=bf16,
        fp16=config.precision == "auto" and cuda and not bf16,
        dataloader_pin_memory=cuda,
        train_sampling_strategy=config.sampling,
        remove_unused_columns=remove_unused_columns,
        # Every trainable parameter gets a gradient in every stage (frozen ones are not DDP's to reduce), so DDP
        # needs no extra pass over the autograd graph to find unused ones (the Trainer's default with a PreTrainedModel).
        ddp_find_unused_parameters=False,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        report_to="none",
        disable_tqdm=True,
    )


@torch.no_grad()
def held_out_loss(trainer: Trainer) -> float:
    """The trainer's eval loss of its model as it stands now (before training: the baseline to beat).

    The same batches as the Trainer's evaluations (its eval dataloader: length-grouped, seeded, a
    shard per process) and the same mean (each batch's loss weighted by its rows), but the model is
    run directly: a Trainer's evaluate() before train() would prepare it for evaluation and keep
    torchrun's gradient averaging from being set up. The RNG is forked because building the
    dataloader draws a seed, and the training that follows must shuffle as a resumed run does.
    """
    model, device = trainer.model, trainer.args.device
    was_training = model.training
    model.to(device).eval()
    weighted, rows = 0.0, 0
    # Under the mixed precision the Trainer evaluates in (accelerate wraps the model once training starts).
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), trainer.accelerator.autocast():
        for batch in trainer.get_eval_dataloader():
            weighted += model(**{key: value.to(device) for key, value in batch.items()}).loss.item() * len(batch["input_ids"])
            rows += len(batch["input_ids"])
    model.train(was_training)
    weighted, rows = all_reduce_sum(torch.tensor([weighted, rows], dtype=torch.float64, device=device)).tolist()
    return weighted / rows


class GuardedTrainer(Trainer):
    """A Trainer that stops at the first non-finite loss instead of training on it."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            last = last_complete_checkpoint(Path(self.args.output_dir))
            kept = f"last good checkpoint: {last} (continue with --resume, e.g. with a lower --learning-rate)" if last else "no checkpoint was saved yet"
            raise TrainingDiverged(f"loss is {loss.item()} at step {self.state.global_step + 1}; stopped before that update; {kept}")
        return loss


def append_metrics(path: Path, line: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(line, ensure_ascii=False) + "\n")


def write_config(out: Path, stage: str, config: TrainConfig) -> None:
    if not is_main_process():
        return
    text = json.dumps({"stage": stage, **config.to_json()}, indent=2, ensure_ascii=False) + "\n"
    (out / CONFIG_FILE).write_text(text, encoding="utf-8")


class MetricsLog(TrainerCallback):
    """Append every log event, train and eval, to metrics.jsonl as it happens."""

    def __init__(self, path: Path, stage: str):
        self.path = path
        self.stage = stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            append_metrics(self.path, {"stage": self.stage, "step": state.global_step, "epoch": state.epoch, **logs})


class RichProgress(TrainerCallback):
    """One rich bar per run: steps done of max_steps, with the latest loss."""

    def __init__(self, stage: str):
        self.stage = stage
        self.progress = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.progress = progress_bar()
            self.progress.start()
            self.task = self.progress.add_task(f"train {self.stage}", total=state.max_steps, completed=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None and logs and "loss" in logs:
            self.progress.update(self.task, description=f"train {self.stage} · loss {logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


@dataclass
class StageResult:
    out: Path
    metrics: dict[str, Any]


def stage_tokenizer(config: TrainConfig, source: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of the model a stage starts from, in the template the stage asks for or inherits; the
    template's name goes into the config, so kochat_config.json records it for every later stage and command."""
    trust_remote_code(config.trust_remote_code)  # the first load of every stage: all later ones follow it
    tokenizer = load_tokenizer(source, config.template, config.force_template, config.system_prompt)
    config.template = template_of(tokenizer)
    return tokenizer


def disable_dropout(model: torch.nn.Module) -> None:
    """No dropout: log-probs that are compared across forwards (PPO's ratio, DPO's against the
    reference) must come from the same function. Llama, Qwen2, GPT-NeoX, Phi3 and Gemma2 drop attention
    probabilities through a float rate their attention function reads (`attention_dropout`), not a module."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def maybe_apply_lora(model: PreTrainedModel, config: TrainConfig, heads: tuple[str, ...] = ()) -> None:
    """LoRA if asked for, and gradient checkpointing if asked for (for the stages outside the Trainer, which
    switches it on itself from the TrainingArguments)."""
    if config.lora_rank > 0:
        targets = [name.strip() for names in config.lora_targets for name in names.split(",") if name.strip()]
        apply_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout, trainable_heads=heads, targets=targets)
    if config.gradient_checkpointing and getattr(model, "supports_gradient_checkpointing", False):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def fit(
    trainer: Trainer,
    config: TrainConfig,
    stage: str,
    resume_from: str | None,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """Train (resuming if asked) with the shared callbacks; returns the final eval metrics."""
    out = Path(config.out)
    write_config(out, stage, config)
    trainer.remove_callback(PrinterCallback)  # metrics.jsonl and the progress bar replace its prints
    tracker = open_tracker(config.report_to, out, stage, config.to_json()) if is_main_process() else None
    for callback in (MetricsLog(out / METRICS_FILE, stage), RichProgress(stage), *([TrackerCallback(tracker)] if tracker else []),
                     *callbacks):
        trainer.add_callback(callback)
    started = time.perf_counter()
    with closing_tracker(tracker):
        train_output = trainer.train(resume_from_checkpoint=resume_from)
        final = _final_eval(trainer)
    final.update({key: value for key, value in train_output.metrics.items() if key in ("train_loss", "train_runtime")})
    final["wall_seconds"] = round(time.perf_counter() - started, 1)
    return final


def _final_eval(trainer: Trainer) -> dict[str, Any]:
    if trainer.eval_dataset is None:
        return {}
    history = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    if history and history[-1].get("step") == trainer.state.global_step:
        return {key: value for key, value in history[-1].items() if key.startswith("eval_")}
    return trainer.evaluate()


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
