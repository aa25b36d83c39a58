"""`kochat train base`: a character-level BPE tokenizer and a small GPT-2 pretrained on the corpus, no network needed."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    TrainerCallback,
    default_data_collator,
    set_seed,
)

from kochat_data.errors import UsageError
from kochat_data.schema import Kind
from kochat_train import sharding, stage_models
from kochat_train.objectives import unigram_perplexity
from kochat_train.outputs import StageResult, prepare_output, save_stage
from kochat_train.stage_configs import BaseConfig
from kochat_train.stage_data import load_stage_data, require_build_directory
from kochat_train.template import (
    IGNORE_INDEX,
    KOCHATGPT_CHAT_TEMPLATE,
    PROMPT_TEMPLATE,
    encode_examples,
    render_prompt,
)
from kochat_train.training import GuardedTrainer, fit, training_arguments

# pad is its own token so padding never looks like an end of text.
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

# The columns each built dataset gives the pretraining corpus.
CORPUS_COLUMNS = {Kind.SFT: ("prompt", "completion"), Kind.RM: ("prompt", "chosen", "chosen_rank"), Kind.PPO: ("prompt",)}


@dataclass(frozen=True)
class Corpus:
    """One split's pretraining documents, distinct and in a fixed order.

    A question is followed by its answer in the template the later stages use, so pretraining
    already sees which answer belongs to which question (with each text a document of its own,
    the SFT model barely read the prompt and the RM was at chance on relevance). Dialogues:
    every SFT record and each RM prompt with its best (rank 0) answer; a rejected answer is
    left out, as it would teach that a broken or unrelated answer follows a question. Plain
    texts: the PPO prompts that have no answer here.
    """

    dialogues: list[tuple[str, str]]
    texts: list[str]

    @classmethod
    def of(cls, data: dict[Kind, datasets.DatasetDict], split: str) -> Corpus:
        dialogues: dict[tuple[str, str], None] = {}
        if Kind.SFT in data:
            dialogues.update(dict.fromkeys(zip(data[Kind.SFT][split]["prompt"], data[Kind.SFT][split]["completion"], strict=True)))
        if Kind.RM in data:
            pairs = data[Kind.RM][split]
            dialogues.update(dict.fromkeys((prompt, answer) for prompt, answer, rank in
                                           zip(pairs["prompt"], pairs["chosen"], pairs["chosen_rank"], strict=True) if rank in (0, None)))
        answered = {prompt for prompt, _ in dialogues}
        texts = dict.fromkeys(prompt for prompt in (data[Kind.PPO][split]["prompt"] if Kind.PPO in data else []) if prompt not in answered)
        return cls([(prompt, answer) for prompt, answer in dialogues if prompt and answer], list(texts))

    def without(self, other: Corpus) -> Corpus:
        """The documents that `other` does not hold (eval text the train split already has would flatter the eval loss)."""
        dialogues, texts = set(other.dialogues), set(other.texts)
        return Corpus([d for d in self.dialogues if d not in dialogues], [t for t in self.texts if t not in texts])

    def strings(self) -> list[str]:
        return [render_prompt(prompt) + answer for prompt, answer in self.dialogues] + self.texts

    def token_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[tuple[list[int], list[int]]]:
        """Each document's ids and EOS, and the labels the model learns from them.

        A dialogue's ids are exactly those SFT and the RM train on (`encode_examples`); its labels
        leave out the template's markers, which the model reads but is never taught to write
        (on a small corpus they are the most frequent text, and a base that learned them best
        made its SFT model answer with `### Response(응답):` lines).
        """
        longest = 1 << 30  # no truncation: packing cuts the stream into blocks
        questions = [p for p, _ in self.dialogues]
        prefix, suffix = (tokenizer(marker, add_special_tokens=False)["input_ids"] for marker in PROMPT_TEMPLATE.split("{prompt}"))
        documents = []
        for (ids, start), question in zip(encode_examples(tokenizer, questions, [a for _, a in self.dialogues], longest),
                                          tokenizer(questions, add_special_tokens=False)["input_ids"] if questions else [], strict=True):
            labels = list(ids)
            if ids[:start] == prefix + question + suffix:  # the markers are tokens of their own (else they are learned)
                labels[: len(prefix)] = [IGNORE_INDEX] * len(prefix)
                labels[start - len(suffix) : start] = [IGNORE_INDEX] * len(suffix)
            documents.append((ids, labels))
        for ids in tokenizer(self.texts, add_special_tokens=False)["input_ids"] if self.texts else []:
            documents.append((ids + [tokenizer.eos_token_id], ids + [tokenizer.eos_token_id]))
        return documents

    def __len__(self) -> int:
        return len(self.dialogues) + len(self.texts)


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int) -> PreTrainedTokenizerFast:
    """BPE over characters, not bytes: every token is whole characters, so no sequence a model samples decodes to a
    broken one. (Byte-level BPE has tokens that hold part of a Hangul syllable's three UTF-8 bytes; a small model
    sampled them out of order, and most answers of the sample pipeline showed U+FFFD.) The alphabet is the corpus's
    most frequent characters, up to 7/8 of the vocabulary (the rest are merges): the sample's ~600 and the shared
    data's ~1,450 all fit the default 8,000; the tiny preset's 400 keep the 346 most frequent. Any other character reads as <unk>, which generation never writes (`rollout.decoding_config`); a
    byte fallback would read it whole, but its byte tokens could be sampled out of order again. Spaces become ▁
    (SentencePiece's convention) so that merges may start a word with its space, as byte-level BPE's Ġ did."""
    texts = list(texts)
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="never")
    alphabet = character_alphabet(texts, vocab_size - len(SPECIAL_TOKENS) - vocab_size // 8)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        # The trainer's own cut of the alphabet breaks ties of frequency by hash order, which differs from run to run
        # (and between torchrun's processes, which then trained on different token ids): the alphabet is chosen here.
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    trained = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)
    trained.chat_template = KOCHATGPT_CHAT_TEMPLATE  # the corpus's dialogues are written in it
    return trained


def character_alphabet(texts: Sequence[str], size: int) -> list[str]:
    """The `size` most frequent characters of `texts`, spaces as Metaspace writes them (▁); ties go to the lower
    code point, so every run and every process picks the same."""
    counts = Counter(char for text in texts for char in text.replace(" ", "▁"))
    return [char for char, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:size]]


def pack_blocks(documents: list[tuple[list[int], list[int]]], block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Documents' (ids, labels), each ending in EOS, joined and cut into (N, block_size) blocks of
    ids and of labels; a short corpus gives one shorter block."""
    ids, labels = (np.concatenate([np.asarray(doc[side], dtype=np.int64) for doc in documents]) if documents else np.zeros(0, np.int64)
                   for side in (0, 1))
    if len(ids) < block_size:
        return ids[None, :], labels[None, :]
    usable = len(ids) // block_size * block_size
    return ids[:usable].reshape(-1, block_size), labels[:usable].reshape(-1, block_size)


def _block_dataset(blocks: tuple[np.ndarray, np.ndarray]) -> datasets.Dataset:
    ids, labels = blocks
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


def train_base(config: BaseConfig, callbacks: Sequence[TrainerCallback] = ()) -> StageResult:
    config = config.resolved()
    require_build_directory(config.data)
    data = {kind: load_stage_data(config.data, kind, list(CORPUS_COLUMNS[kind]), "kochat train base")
            for kind in Kind if (Path(config.data) / kind.value).is_dir()}
    if not data:
        raise UsageError(f"{config.data}: no sft, rm or ppo dataset here; build one with `kochat data build`")
    resume_from = prepare_output(config)
    set_seed(config.seed)
    train_corpus = Corpus.of(data, "train")
    eval_corpus = Corpus.of(data, "eval").without(train_corpus)
    tokenizer = train_tokenizer(train_corpus.strings(), config.vocab_size, config.min_frequency)
    train_blocks = pack_blocks(train_corpus.token_ids(tokenizer), config.max_length)
    eval_blocks = pack_blocks(eval_corpus.token_ids(tokenizer), config.max_length) if len(eval_corpus) else None
    model_config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=config.max_length, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(model_config)
    where = stage_models.placement(config, model_config)
    if where is not None:
        model = stage_models.prepared(sharding.shard_in_memory(model, where), where)
    trainer = GuardedTrainer(
        model=model,
        args=training_arguments(config, len(train_blocks[0]), evaluate=eval_blocks is not None),
        train_dataset=_block_dataset(train_blocks),
        eval_dataset=_block_dataset(eval_blocks) if eval_blocks is not None else None,
        data_collator=default_data_collator,
        processing_class=tokenizer,
    )
    metrics = fit(trainer, config, "base", resume_from, callbacks)
    metrics["train_tokens"] = int(train_blocks[0].size)
    metrics["unknown_token_share"] = round(float((train_blocks[0] == tokenizer.unk_token_id).mean()), 6)  # characters outside the alphabet
    if eval_blocks is not None:
        metrics["eval_perplexity"] = math.exp(metrics["eval_loss"])
        # The LM predicts the labelled positions after the first of each block; score the baseline on the same tokens.
        train_labels, eval_labels = train_blocks[1].ravel(), eval_blocks[1][:, 1:].ravel()
        metrics["unigram_perplexity"] = unigram_perplexity(train_labels[train_labels != IGNORE_INDEX],
                                                           eval_labels[eval_labels != IGNORE_INDEX], len(tokenizer))
    return save_stage(model, tokenizer, config, "base", metrics)
