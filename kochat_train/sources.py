"""Where models come from: a hub name or a local directory, checked before loading, with KoGPT-2's special tokens put right.

Every loader refuses what is not what its caller asked for, in one line: a path that does not
exist, a directory that holds no model, a weight file that is cut or corrupt, a causal LM where a
reward model is expected, a hub name that cannot be had without a network.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DistributedConfig,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_layers import GenericForSequenceClassification

from kochat_data.errors import UsageError
from kochat_data.hub import hub_offline, hub_reachable
from kochat_train.template import use_template

# skt/kogpt2-base-v2 ships a GPT-2 tokenizer whose class defaults name `<|endoftext|>` as
# bos/eos/unk, a token its vocabulary lacks; the seed notebook therefore passed `</s>` for all
# four roles. We do the same whenever a tokenizer's eos is foreign to its vocabulary but
# `</s>` is in it.
KOGPT2_SPECIAL_TOKENS = {"bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>", "pad_token": "</s>"}
REWARD_HEAD = "score"  # a decoder's head; encoders name theirs `classifier`
REWARD_HEADS = (REWARD_HEAD, "classifier")
PAD_TOKEN = "<pad>"
_REMOTE_CODE = {"trusted": False}


def trust_remote_code(trusted: bool) -> None:
    """Let every later load run a model's own Python code from its directory or the hub (`--trust-remote-code`).
    Off, such a model is refused in one line; transformers is never left to ask y/N on the terminal."""
    _REMOTE_CODE["trusted"] = trusted


def load_tokenizer(source: str | Path, template: str | None = None, force_template: bool = False,
                   system_prompt: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of `source` with an eos in its vocabulary, a pad token (eos if it has none) and the chat
    template of the prompt format it reads (`template.use_template`: the one asked for, else its own)."""
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
    use_template(tokenizer, source, template, force_template, system_prompt)
    return tokenizer


def with_distinct_pad(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A decoder reward model's tokenizer, with a pad token other than its EOS.

    Plain transformers reads a sequence-classification score at the last token whose id is not
    `config.pad_token_id`; with pad = eos that is the token before the final EOS, where kochat
    (and training) read the EOS itself. `<pad>` when the vocabulary has it (KoGPT-2 does), else
    `<pad>` added as a new token (one embedding row more).
    """
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        if PAD_TOKEN in tokenizer.get_vocab():
            tokenizer.pad_token = PAD_TOKEN
        else:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def _eos_is_foreign(tokenizer: PreTrainedTokenizerBase) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    vocab = backend.get_vocab(with_added_tokens=False)
    return "</s>" in vocab and (tokenizer.eos_token is None or tokenizer.eos_token not in vocab)


def inference_dtype(device: str) -> torch.dtype:
    """Frozen models (reference, reward, judge) may run in bf16 on CUDA; trained ones stay fp32."""
    return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def load_causal_lm(source: str | Path, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype = torch.float32,
                   distributed: DistributedConfig | None = None) -> PreTrainedModel:
    """A causal LM in `dtype` (fp32 by default: a checkpoint saved in fp16 must not train in pure half precision),
    sharded over the processes by transformers when `distributed` says so (`sharding.distributed_config`).

    A reward model directory is refused: its backbone would load with a language-model head tied to
    the embeddings, and answer with fluent-looking noise instead of an error.
    """
    config = _from_pretrained(AutoConfig, source)  # refused before any weights are read
    architectures = config.architectures or []
    if architectures and all(name.endswith("ForSequenceClassification") for name in architectures):
        raise UsageError(f"{source}: a reward model ({', '.join(architectures)}), not a language model; pass a base, SFT, PPO "
                         "or DPO directory")
    sharded = {} if distributed is None else {"distributed_config": distributed}
    return _align(_from_pretrained(AutoModelForCausalLM, source, config=config, dtype=dtype, **sharded), tokenizer)


def with_reward_class(source: str | Path) -> None:
    """Make sure transformers has a `…ForSequenceClassification` for `source`'s family. Where it has none (HyperCLOVAX,
    EXAONE 3, Cohere …), one is made as transformers makes its own: `GenericForSequenceClassification` (the backbone and
    a `score` head read at the last token that is not padding) on the family's PreTrainedModel, registered with
    AutoModelForSequenceClassification. The directory kochat saves names that class; plain transformers loads it after
    the same two lines (README, "Bring your own")."""
    config = _from_pretrained(AutoConfig, source)
    mapping = AutoModelForSequenceClassification._model_mapping
    if type(config) in mapping or type(config) not in AutoModelForCausalLM._model_mapping:
        return  # transformers has one, or this is no causal LM (an encoder, or something the loaders refuse)
    causal = AutoModelForCausalLM._model_mapping[type(config)]
    family = next(base for base in causal.__mro__ if base.__name__.endswith("PreTrainedModel") and base is not PreTrainedModel)
    name = causal.__name__.removesuffix("ForCausalLM") + "ForSequenceClassification"
    AutoModelForSequenceClassification.register(type(config), type(name, (GenericForSequenceClassification, family), {}), exist_ok=True)


def load_reward_model(source: str | Path, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype = torch.float32,
                      distributed: DistributedConfig | None = None) -> PreTrainedModel:
    """A trained reward model, sharded as `distributed` says (PPO's critic; see `load_causal_lm`); a directory whose
    one-output head would be initialised at random is refused."""
    with_reward_class(source)
    sharded = {} if distributed is None else {"distributed_config": distributed}
    model, info = _from_pretrained(AutoModelForSequenceClassification, source, num_labels=1, dtype=dtype, output_loading_info=True,
                                   **sharded)
    missing = {key for key in info["missing_keys"] if key.split(".")[0] in REWARD_HEADS}
    if not any(hasattr(model, head) for head in REWARD_HEADS) or missing:
        architectures = ", ".join(getattr(model.config, "architectures", None) or [type(model).__name__])
        raise UsageError(f"{source}: not a reward model (a {architectures} checkpoint without a trained one-output "
                         f"'{REWARD_HEAD}' or 'classifier' head); pass a directory written by `kochat train rm`")
    return _align(model, tokenizer)


def reads_pairs(model: PreTrainedModel) -> bool:
    """An encoder's classifier (BERT, XLM-R: `classifier` on the first token) reads a (question, answer)
    text pair; a decoder's `score` head reads the last token of template + response + EOS."""
    return not hasattr(model, REWARD_HEAD)


def load_encoder(source: str | Path) -> PreTrainedModel:
    """A pretrained encoder's backbone (no head), to embed texts."""
    return _from_pretrained(AutoModel, source)


def init_reward_model(source: str | Path, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype = torch.float32,
                      distributed: DistributedConfig | None = None) -> PreTrainedModel:
    """A reward model to train: from a reward model directory, or a causal LM or an encoder with a new head (fp32 by
    default), sharded as `distributed` says (see `load_causal_lm`)."""
    with_reward_class(source)
    sharded = {} if distributed is None else {"distributed_config": distributed}
    model = _align(_from_pretrained(AutoModelForSequenceClassification, source, num_labels=1, dtype=dtype, **sharded), tokenizer)
    if not any(hasattr(model, head) for head in REWARD_HEADS):
        raise UsageError(f"{source}: {type(model).__name__} has no `{REWARD_HEAD}` or `classifier` head; kochat's reward model needs one")
    return model


def model_positions(model: PreTrainedModel) -> int | None:
    """How many positions the model has (GPT-2's n_positions), None when unbounded."""
    return getattr(model.config, "max_position_embeddings", None)


def capped_length(max_length: int, model: PreTrainedModel) -> int:
    """`max_length`, but never more tokens than the model has positions (past them GPT-2 indexes
    outside its position table: an IndexError on CPU, a device assert on CUDA)."""
    positions = model_positions(model)
    return min(max_length, positions) if positions else max_length


def _align(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        if getattr(model, "is_distributed_loading_by_transformers", False):
            raise UsageError(f"the tokenizer has {len(tokenizer)} tokens and the model {model.get_input_embeddings().num_embeddings} "
                             "embedding rows: a sharded model cannot grow them (train once without --sharding, e.g. an SFT "
                             "step, to save the model with the rows added)")
        model.resize_token_embeddings(len(tokenizer))
    token_ids = {f"{role}_token_id": getattr(tokenizer, f"{role}_token_id") for role in ("bos", "eos", "pad")}
    for name, token_id in token_ids.items():
        setattr(model.config, name, token_id)
    if getattr(model, "generation_config", None) is not None:
        # A hub model's generation_config.json (repetition_penalty, no_repeat_ngram_size, …)
        # must not steer kochat's sampling: only the token ids are kept, the end ids all of them
        # (instruct models end a turn with a token of their own beside EOS: `[2, 3]`).
        ends = end_token_ids(tokenizer.eos_token_id, model.generation_config.eos_token_id)
        model.generation_config = GenerationConfig(**{**token_ids, "eos_token_id": ends if len(ends) > 1 else ends[0]})
    return model


def end_token_ids(*named: int | list[int] | None) -> list[int]:
    """Each end id once, in order, from what tokenizers and generation configs name: one id, a list (instruct
    models end a turn with a token of their own beside EOS: `[2, 3]`) or none."""
    return list(dict.fromkeys(i for ids in named if ids is not None for i in ([ids] if isinstance(ids, int) else ids)))


def _from_pretrained(factory, source: str | Path, **kwargs):
    where, local_only = locate(source)
    trusted = _REMOTE_CODE["trusted"]
    try:
        return factory.from_pretrained(where, local_files_only=local_only, trust_remote_code=trusted, **kwargs)
    except Exception as err:  # noqa: BLE001 — whatever from_pretrained raises here is about the files it was given
        text = str(err).strip()
        first_line = text.splitlines()[0] if text else type(err).__name__
        if not trusted and "trust_remote_code" in text:
            first_line = "its code ships with the model and runs only with --trust-remote-code; read it first"
        if local_only and not Path(where).is_dir():
            first_line = f"not in the local cache and the hub cannot be reached ({first_line})"
        raise UsageError(f"{source}: cannot load ({first_line})") from None


def locate(source: str | Path) -> tuple[str, bool]:
    """`source` as `from_pretrained` should get it, and whether only the local cache may be used.

    A name that looks like a path must be a model directory; only a bare `name` or `org/name`
    is a hub name. huggingface_hub retries a dead connection for about a minute, so without a
    network (or with HF_HUB_OFFLINE set) a hub name is looked up in the local cache alone.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
            raise UsageError(f"{source}: not a model directory (no config.json); expected one written by `kochat train` "
                             "or `save_pretrained`")
        return str(path), False
    if path.exists():
        raise UsageError(f"{source}: is a file; expected a model directory or a hub name")
    first = text.split("/", 1)[0]
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1 or text.endswith("/") or (first != text and Path(first).is_dir()):
        raise UsageError(f"{source}: no such directory")
    return text, hub_offline() or not hub_reachable()
