"""Resume, NaN guard, LoRA and KoGPT-2 special tokens on the tiny preset."""

import json

import datasets
import pytest
import torch
from conftest import TINY
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    TrainerCallback,
)

from kochat_train.lora import apply_lora
from kochat_train.outputs import drop_metrics_after
from kochat_train.rm import ScalarRewardModel
from kochat_train.sft import SFTConfig, tokenize_sft, train_sft
from kochat_train.sources import init_reward_model, load_tokenizer
from kochat_train.training import TrainingDiverged, planned_steps, training_arguments

# bf16 autocast may move an eval loss by this share of it (on the shared data, SFT: 0.0005; the tiny model here: 1e-6).
BF16_LOSS_TOLERANCE = 0.001


class Interrupt(Exception):
    pass


class StopAt(TrainerCallback):
    """Stands in for a kill: raise once training has reached `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupt


class PoisonAt(TrainerCallback):
    """Turn one weight into NaN after `step`, so the next loss is NaN."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def weights(out) -> dict[str, torch.Tensor]:
    return dict(AutoModelForCausalLM.from_pretrained(out).named_parameters())


def test_resume_continues_from_the_saved_step(tiny_base, sample_data, tmp_path):
    settings = dict(data=sample_data, model=str(tiny_base), max_steps=6, save_steps=2, **TINY)
    straight = train_sft(SFTConfig(out=tmp_path / "straight", **settings))
    with pytest.raises(Interrupt):
        train_sft(SFTConfig(out=tmp_path / "cut", **settings), callbacks=[StopAt(3)])
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-2").is_dir()
    assert not (tmp_path / "cut" / "kochat_stage.json").exists()
    resumed = train_sft(SFTConfig(out=tmp_path / "cut", resume=True, **settings))

    logged = [json.loads(line)["step"] for line in (resumed.out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert logged == [1, 2, 3, 4, 5, 6]  # step 3 of the cut run was dropped and trained again
    first, second = weights(straight.out), weights(resumed.out)
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=1e-6)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_base, sample_data, tmp_path):
    config = SFTConfig(data=sample_data, out=tmp_path / "sft", model=str(tiny_base), max_steps=8, save_steps=2, **TINY)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 4; .*checkpoint-2 \(continue with --resume"):
        train_sft(config, callbacks=[PoisonAt(3)])
    assert TrainingDiverged.exit_code == 3
    checkpoint = AutoModelForCausalLM.from_pretrained(tmp_path / "sft" / "checkpoints" / "checkpoint-2")
    assert all(torch.isfinite(p).all() for p in checkpoint.parameters())
    assert not (tmp_path / "sft" / "kochat_stage.json").exists()


class CaptureModel(TrainerCallback):
    """Records which parameters train and the logits of the final (LoRA) model."""

    def __init__(self, probe: torch.Tensor):
        self.probe = probe

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        model.eval()
        with torch.no_grad():
            self.logits = model(self.probe).logits


def test_lora_trains_only_lora_and_the_merged_save_loads_plainly(tiny_base, sample_data, tmp_path):
    probe = torch.tensor([[5, 6, 7, 8, 9]])
    capture = CaptureModel(probe)
    result = train_sft(SFTConfig(data=sample_data, out=tmp_path / "lora", model=str(tiny_base), max_steps=3, lora_rank=4,
                                 precision="fp32", **TINY), callbacks=[capture])  # exact to 1e-5 needs fp32 on both sides
    assert capture.trainable and all("lora_" in name for name in capture.trainable)

    merged = AutoModelForCausalLM.from_pretrained(result.out).eval()  # a plain GPT-2, no loralib
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(probe).logits, capture.logits, rtol=0, atol=1e-5)
    base, tuned = weights(tiny_base), dict(merged.named_parameters())
    changed = {name for name in base if not torch.equal(base[name], tuned[name])}
    assert changed and all(".attn." in name or ".mlp." in name for name in changed)  # only the adapted projections


@pytest.fixture(params=["hub-files", "save_pretrained"])
def kogpt2_like(tmp_path, request):
    """A local stand-in for skt/kogpt2-base-v2: a GPT-2 model whose tokenizer class defaults eos to
    `<|endoftext|>`, a token its vocabulary lacks, over a vocabulary that has `</s>`. Either the
    hub's files (a bare tokenizer.json) or what `save_pretrained` of the loaded tokenizer writes."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<usr>", "<pad>", "<sys>", "<unk>", "<mask>"]
    tokenizer.train_from_iterator(
        ["안녕하세요 반갑습니다", "오늘 날씨가 좋네요", "### Instruction(명령어):", "### Response(응답):"] * 20,
        trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    out = tmp_path / "kogpt2-like"
    out.mkdir()
    if request.param == "hub-files":
        tokenizer.save(str(out / "tokenizer.json"))
    else:
        GPT2TokenizerFast(tokenizer_object=tokenizer).save_pretrained(out)
    vocab = tokenizer.get_vocab_size()
    GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(out)
    return out


def test_kogpt2_special_tokens_as_the_seed_sets_them(kogpt2_like, sample_data, tmp_path):
    tokenizer = load_tokenizer(kogpt2_like)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token) == ("</s>",) * 4
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 1

    rows = datasets.Dataset.from_dict({"prompt": ["안녕"], "completion": ["반갑습니다"]})
    [row] = tokenize_sft(rows, tokenizer, max_length=64)
    assert row["input_ids"][-1] == row["labels"][-1] == 1 and row["attention_mask"][-1] == 1

    # pad = eos must not move the reward off the real EOS
    reward_model = ScalarRewardModel(init_reward_model(kogpt2_like, tokenizer)).eval()
    ids = torch.tensor([row["input_ids"]])
    padded = torch.tensor([row["input_ids"] + [1, 1, 1]])
    mask = torch.tensor([[1] * len(row["input_ids"]) + [0, 0, 0]])
    assert reward_model(padded, mask).item() == pytest.approx(reward_model(ids, torch.ones_like(ids)).item(), abs=1e-5)

    result = train_sft(SFTConfig(data=sample_data, out=tmp_path / "sft", model=str(kogpt2_like), max_steps=1, **TINY))
    assert load_tokenizer(result.out).eos_token == "</s>"


def test_lora_layers_do_not_merge_on_every_train_eval_switch(tiny_base):
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    apply_lora(model, rank=2, alpha=4, dropout=0.0)
    layer = model.transformer.h[0].attn.c_attn
    torch.nn.init.normal_(layer.lora_B)  # a trained-looking ΔW (loralib starts B at zero)
    before = layer.weight.detach().clone()
    probe = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        model.eval()
        assert torch.equal(layer.weight, before)  # PPO switches modes every step: no fold in, fold out
        first = model(probe).logits
        model.train()
        assert torch.equal(layer.weight, before)
        model.eval()
        torch.testing.assert_close(model(probe).logits, first, rtol=0, atol=0)


def test_warmup_is_a_share_of_the_run_and_min_steps_repeats_small_data():
    config = SFTConfig(data="d", out="o", model="m", batch_size=16, epochs=2, min_steps=40, warmup_ratio=0.1)
    assert planned_steps(rows=54, config=config, world=1) == 40  # 4 steps an epoch × 2 epochs < 40
    assert planned_steps(rows=10_000, config=config, world=1) == -1  # the epochs give 1250 steps
    assert planned_steps(rows=10_000, config=SFTConfig(data="d", out="o", model="m", max_steps=7), world=1) == 7
    assert planned_steps(rows=54, config=SFTConfig(data="d", out="o", model="m", batch_size=16, min_steps=3), world=2) == 3
    arguments = training_arguments(config, 54)
    assert (arguments.max_steps, arguments.warmup_steps) == (40, 0.1)


def test_resume_forgets_a_metrics_line_torn_by_a_kill(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "loss": 1.2}\n{"step": 4, "lo', encoding="utf-8")
    drop_metrics_after(log, step=3)
    assert log.read_text(encoding="utf-8") == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "loss": 1.2}\n'


def test_auto_precision_is_bf16_on_a_native_bf16_cpu_in_every_stage_but_the_rm(monkeypatch):
    from kochat_train import devices
    from kochat_train.stage_configs import (
        BaseConfig,
        DPOConfig,
        PPOConfig,
        RewardConfig,
    )

    for native in (True, False):
        monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
        assert [devices.uses_bf16(config(), "cpu") for config in (BaseConfig, SFTConfig, DPOConfig, PPOConfig)] == [native] * 4
        assert not devices.uses_bf16(RewardConfig(), "cpu")
        assert devices.uses_bf16(RewardConfig(precision="bf16"), "cpu") and not devices.uses_bf16(SFTConfig(precision="fp32"), "cpu")
        assert not devices.uses_bf16(SFTConfig(), "mps")


def test_bf16_autocast_trains_as_fp32_does_and_keeps_fp32_weights(tiny_base, sample_data, tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        result = train_sft(SFTConfig(data=sample_data, out=tmp_path / precision, model=str(tiny_base), max_steps=8, precision=precision,
                                     **TINY))
        losses[precision] = result.metrics["eval_loss"]
        assert {p.dtype for p in AutoModelForCausalLM.from_pretrained(result.out).parameters()} == {torch.float32}
    # The tolerance the CPU default rests on (on the shared data the two differed by 0.002 nats).
    assert abs(losses["bf16"] - losses["fp32"]) < BF16_LOSS_TOLERANCE * losses["fp32"], losses
    assert losses["bf16"] != losses["fp32"]  # the autocast did run
