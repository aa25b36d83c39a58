"""Generation for every caller (PPO rollouts, `eval stages`, `eval decoding`, `generate`, `chat`): left-padded
batched generation with the KV cache under one explicit GenerationConfig, response masks, per-token log-probs."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from kochat_data.errors import UsageError
from kochat_train.objectives import LOGPROB_ROWS, gathered_logprobs, positions_from_mask
from kochat_train.sharding import is_sharded
from kochat_train.sources import end_token_ids, model_positions
from kochat_train.template import Prompt, adds_special_tokens, prompt_text, render_prompts


@dataclass
class Rollout:
    """A batch of prompts (left-padded, (B, P)) and their sampled responses ((B, R), cut after the first EOS)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    ended: torch.Tensor | None = None  # (B,) bool: stopped at an end token rather than at the token limit (from generate)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)


def response_mask(response_ids: torch.Tensor, end_ids: Sequence[int]) -> torch.Tensor:
    """1 up to and including the first end token (EOS, or another end id such as end-of-turn) of each row, 0 after. (B, R)"""
    is_end = torch.isin(response_ids, torch.tensor(list(end_ids), device=response_ids.device)).long()
    ends_before = is_end.cumsum(dim=1) - is_end
    return (ends_before == 0).long()



# Every setting that changes what generate() produces, at the value that changes nothing, so
# that no field is left None for generate() to fill from a hub model's generation_config.json
# (a repetition_penalty or no_repeat_ngram_size there would change what PPO samples).
NEUTRAL_DECODING = {
    "do_sample": True, "num_beams": 1, "num_beam_groups": 1, "diversity_penalty": 0.0, "temperature": 1.0, "top_k": 0,
    "top_p": 1.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "length_penalty": 1.0,
    "min_length": 0, "num_return_sequences": 1, "early_stopping": False, "renormalize_logits": False,
    "remove_invalid_values": False, "use_cache": True,
}


def decoding_config(tokenizer: PreTrainedTokenizerBase, **settings) -> GenerationConfig:
    """A complete GenerationConfig: full-distribution sampling with the KV cache, changed only by `settings`.
    The unknown token is never generated: it stands for a character the tokenizer does not have, so it can only
    be dropped from the text (unless it is also the end token, as in GPT-2's tokenizer)."""
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id}
    unknown = [tokenizer.unk_token_id] if tokenizer.unk_token_id is not None and tokenizer.unk_token_id not in ends else None
    return GenerationConfig(**{**NEUTRAL_DECODING, **settings, "pad_token_id": tokenizer.pad_token_id, "suppress_tokens": unknown,
                               "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id})


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], max_length: int, template: bool = True) -> dict[str, torch.Tensor]:
    """Prompts in the tokenizer's template (texts as they are when `template` is False), tokenised as training
    tokenises them (`encode_examples`), left-padded so every row's last prompt token sits at the same column,
    and left-truncated: what is cut is the oldest text."""
    texts = render_prompts(tokenizer, prompts) if template else [prompt_text(p) for p in prompts]
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    try:
        return tokenizer(texts, add_special_tokens=adds_special_tokens(tokenizer), padding=True,
                         truncation=True, max_length=max_length, return_tensors="pt")
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = "right", "right"


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], max_length: int,
             decoding: GenerationConfig, template: bool = True, streamer=None) -> Rollout:
    """`decoding.num_return_sequences` responses per prompt under `decoding` (see `decoding_config`),
    rows grouped by prompt; `streamer` (batch of one) receives tokens as they come.

    Prompts keep their last `max_length` tokens, fewer when the model's positions would not
    fit the prompt and `max_new_tokens`.
    """
    device = next(model.parameters()).device
    positions = model_positions(model)
    if positions is not None:  # prompt + response must fit the model's positions
        max_length = min(max_length, positions - decoding.max_new_tokens)
        if max_length < 1:
            raise UsageError(f"max_new_tokens {decoding.max_new_tokens} leaves no room for a prompt in the model's {positions} positions")
    encoded = encode_prompts(tokenizer, prompts, max_length, template).to(device)
    # The tokenizer's EOS (the decoding's), then any other end id of the model's generation_config: an answer ends at the first.
    ends = end_token_ids(decoding.eos_token_id, getattr(model.generation_config, "eos_token_id", None))
    decoding = copy.deepcopy(decoding)
    decoding.eos_token_id = ends if len(ends) > 1 else ends[0]
    # A sharded model's every forward is collective: all processes keep stepping until the last one's answers end.
    output = model.generate(**encoded, generation_config=decoding, streamer=streamer, synced_gpus=is_sharded(model))
    response_ids = output[:, encoded["input_ids"].shape[1]:]
    mask = response_mask(response_ids, ends)
    ended = torch.isin(response_ids, torch.tensor(ends, device=device)).any(dim=1)  # the mask runs up to the first of them
    copies = decoding.num_return_sequences or 1
    prompt_ids, prompt_mask = (encoded[key].repeat_interleave(copies, dim=0) for key in ("input_ids", "attention_mask"))
    return Rollout(prompt_ids, prompt_mask, response_ids * mask + tokenizer.pad_token_id * (1 - mask), mask, ended)


def response_texts(tokenizer: PreTrainedTokenizerBase, rollout: Rollout) -> list[str]:
    """Each response as text, without its EOS or padding."""
    return [tokenizer.decode(ids[mask == 1], skip_special_tokens=True) for ids, mask in zip(rollout.response_ids, rollout.response_mask, strict=True)]


def response_logits(model: PreTrainedModel, rollout: Rollout, temperature: float = 1.0) -> torch.Tensor:
    """Logits that predicted each response token (positions P−1 … P+R−2), divided by the sampling
    temperature so that their log-softmax is the distribution the tokens were drawn from. (B, R, V)"""
    mask = rollout.attention_mask
    width = rollout.response_ids.shape[1]
    # Only the positions that predict a response token go through the LM head (no (B, P, V) logits of the prompt).
    logits = model(input_ids=rollout.input_ids, attention_mask=mask, position_ids=positions_from_mask(mask), logits_to_keep=width + 1).logits
    return logits[:, :-1].float() / temperature


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under `logits` (a few rows at a time: `gathered_logprobs`). (B, R, V), (B, R) → (B, R)"""
    return gathered_logprobs(logits, tokens)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each predictive distribution, log Z − E_p[logit], a few rows at a time. (B, R, V) → (B, R)"""
    return torch.cat([torch.logsumexp(chunk, dim=-1) - (torch.softmax(chunk, dim=-1) * chunk).sum(dim=-1)
                      for chunk in logits.split(LOGPROB_ROWS)])
