"""The answers a label project ranks, written by stages through the one generation path (`rollout.generate`, as
PPO and `eval stages` generate): one stage sampled k times, or several stages answering once each, seeded."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import set_seed

from kochat_train.decoding_flags import with_defaults
from kochat_train.devices import resolve_device
from kochat_train.rollout import decoding_config, generate, response_texts
from kochat_train.sources import inference_dtype, load_causal_lm, load_tokenizer
from kochat_train.template import Prompt

if TYPE_CHECKING:  # project.py imports this module only when stages answer
    from kochat_human.project import LabelProjectConfig

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@torch.no_grad()
def answer_with_stages(config: LabelProjectConfig, prompts: list[Prompt],
                       progress: Callable[[str, int], Callable[[int], None]] | None = None) -> list[tuple[list[str], list[str]]]:
    """(answers, the stage of each) for every prompt under `config`."""
    device = resolve_device(config.device)
    copies = 1 if len(config.stages) > 1 else config.answers_per_prompt
    settings = with_defaults({**config.decoding, "num_return_sequences": copies})
    tokenizers = {name: load_tokenizer(directory) for name, directory in config.stages.items()}  # all refused before any work
    answers: list[tuple[list[str], list[str]]] = [([], []) for _ in prompts]
    for name, directory in config.stages.items():
        tokenizer = tokenizers[name]
        model = load_causal_lm(directory, tokenizer, dtype=inference_dtype(device)).to(device).eval()
        advance = progress(f"answers of {name}", len(prompts)) if progress else (lambda done: None)
        decoding = decoding_config(tokenizer, **settings)
        set_seed(config.seed)  # every stage draws the same sampling noise
        for start in range(0, len(prompts), config.batch_size):
            batch = prompts[start : start + config.batch_size]
            texts = response_texts(tokenizer, generate(model, tokenizer, batch, config.max_length, decoding))
            for row, text in enumerate(texts):  # rows come grouped by prompt
                completions, sources = answers[start + row // copies]
                completions.append(text.strip())
                sources.append(name)
            advance(len(batch))
        del model
    return answers


def stage_fingerprint(directory: Path) -> str | None:
    """sha256 of a stage's weights file (None for a hub name, whose files are not here)."""
    for name in WEIGHT_FILES:
        path = Path(directory) / name
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            return digest.hexdigest()
    return None
