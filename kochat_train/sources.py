"""Where models come from: a hub name or a local directory, with KoGPT-2's special tokens put right."""

from __future__ import annotations

from pathlib import Path

from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from kochat_data.errors import UsageError

# skt/kogpt2-base-v2 ships a GPT-2 tokenizer whose class defaults name `<|endoftext|>` as
# bos/eos/unk, a token its vocabulary lacks; the seed notebook therefore passed `</s>` for all
# four roles. We do the same whenever a tokenizer's eos is foreign to its vocabulary but
# `</s>` is in it.
KOGPT2_SPECIAL_TOKENS = {"bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>", "pad_token": "</s>"}


def load_tokenizer(source: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of `source` with an eos in its vocabulary and a pad token (eos if it has none)."""
    tokenizer = _from_pretrained(AutoTokenizer, source)
    if _eos_is_foreign(tokenizer):
        tokenizer = _from_pretrained(AutoTokenizer, source, **KOGPT2_SPECIAL_TOKENS)
    if tokenizer.eos_token_id is None:
        raise UsageError(f"{source}: the tokenizer has no end-of-sequence token; kochat needs one to end responses")
    if tokenizer.pad_token_id is None:
        # Padding positions are found from lengths (attention_mask), never by comparing ids,
        # so pad = eos cannot hide a real EOS.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _eos_is_foreign(tokenizer: PreTrainedTokenizerBase) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    vocab = backend.get_vocab(with_added_tokens=False)
    return "</s>" in vocab and (tokenizer.eos_token is None or tokenizer.eos_token not in vocab)


def load_causal_lm(source: str | Path, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    return _align(_from_pretrained(AutoModelForCausalLM, source), tokenizer)


def load_reward_model(source: str | Path, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A scalar-head model: from a reward model directory, or a causal LM with a new head."""
    model = _align(_from_pretrained(AutoModelForSequenceClassification, source, num_labels=1), tokenizer)
    if not hasattr(model, "score"):
        raise UsageError(f"{source}: {type(model).__name__} has no `score` head; kochat's reward model needs one")
    return model


def _align(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    for role in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{role}_token_id")
        setattr(model.config, f"{role}_token_id", token_id)
        if getattr(model, "generation_config", None) is not None:
            setattr(model.generation_config, f"{role}_token_id", token_id)
    return model


def _from_pretrained(factory, source: str | Path, **kwargs):
    try:
        return factory.from_pretrained(str(source), **kwargs)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{source}: cannot load ({first_line})") from None
