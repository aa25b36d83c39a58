"""DPO: the losses and log-probs by hand, the stage on the tiny preset, resume and the precomputed reference."""

import json
import math

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import TINY
from kochat_train.dpo import DPOConfig, PreferenceCollator, tokenize_preferences, train_dpo
from kochat_train.objectives import dpo_loss, sequence_logprobs
from kochat_train.sources import load_causal_lm, load_tokenizer

# Two pairs: log π(chosen), log π(rejected), and the reference's, with β = 0.1.
CHOSEN, REJECTED = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
REF_CHOSEN, REF_REJECTED = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])


def test_sigmoid_loss_and_implicit_rewards_by_hand():
    # Δ = (c − r) − (ref_c − ref_r) = 2 and −1; −log σ(0.2) = log(1 + e^−0.2), −log σ(−0.1) = log(1 + e^0.1)
    loss, chosen, rejected = dpo_loss(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.1)
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-0.2)) + math.log(1 + math.exp(0.1))) / 2, abs=1e-6)
    assert chosen.tolist() == pytest.approx([0.1, 0.0]) and rejected.tolist() == pytest.approx([-0.1, 0.1])
    assert ((chosen - rejected) > 0).float().mean().item() == 0.5  # accuracy; the second pair is ranked wrong


def test_ipo_loss_by_hand():
    # (Δ − 1/(2β))² with 1/(2β) = 5: (2 − 5)² = 9 and (−1 − 5)² = 36
    loss, _, _ = dpo_loss(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.1, loss_type="ipo")
    assert loss.item() == pytest.approx(22.5)


def test_sequence_logprobs_sum_or_average_the_counted_tokens():
    logits = torch.zeros(1, 5, 4)  # uniform over 4 tokens: log ¼ per predicted token
    labels = torch.tensor([[-100, -100, 2, 3, -100]])  # tokens 2 and 3 are predicted from positions 1 and 2
    assert sequence_logprobs(logits, labels).item() == pytest.approx(2 * math.log(0.25))
    assert sequence_logprobs(logits, labels, length_normalize=True).item() == pytest.approx(math.log(0.25))
    logits[0, 1, 2] = math.log(3)  # p(token 2 | position 1) = 3/6
    assert sequence_logprobs(logits, labels).item() == pytest.approx(math.log(0.5) + math.log(0.25))


def test_logprobs_cover_the_response_and_eos_not_the_prompt_or_padding_with_pad_equal_to_eos(kogpt2_shaped):
    tokenizer = load_tokenizer(kogpt2_shaped)
    eos = tokenizer.eos_token_id
    assert eos == tokenizer.pad_token_id
    pairs = datasets.Dataset.from_dict({"prompt": ["안녕하세요", "날씨"], "chosen": ["반갑습니다 정말로 반가워요", "맑아요"],
                                        "rejected": ["네", "asdf qwer"], "chosen_rank": [0, 0], "rejected_rank": [1, 2]})
    features = tokenize_preferences(pairs, tokenizer, max_length=64)
    batch = PreferenceCollator(tokenizer)(list(features))
    for row, feature in enumerate([*features]):
        ids, labels = feature["chosen_ids"], feature["chosen_labels"]
        response = [i for i, label in enumerate(labels) if label != -100]
        assert ids[response[-1]] == eos and labels[-1] == eos  # the EOS is counted
        padded = batch["labels"][row, len(ids):]
        assert (padded == -100).all() and (batch["input_ids"][row, len(ids):] == eos).all()  # padding (= eos) is not
    model = load_causal_lm(kogpt2_shaped, tokenizer).eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ours = sequence_logprobs(logits, batch["labels"])
    ids, labels = features[0]["chosen_ids"], features[0]["chosen_labels"]
    alone = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].detach(), dim=-1)
    expected = sum(alone[position - 1, ids[position]].item() for position, label in enumerate(labels) if label != -100)
    assert ours[0].item() == pytest.approx(expected, abs=1e-4)


def parameters(path) -> dict[str, torch.Tensor]:
    return dict(AutoModelForCausalLM.from_pretrained(path).named_parameters())


def test_a_step_changes_every_parameter_and_logs_the_implicit_rewards(tiny_base, sample_data, tmp_path):
    result = train_dpo(DPOConfig(data=sample_data, out=tmp_path / "dpo", model=str(tiny_base), max_steps=1, **TINY))
    before, after = parameters(tiny_base), parameters(result.out)
    assert [name for name in before if torch.equal(before[name], after[name])] == []
    [line] = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert line["rewards_chosen"] == 0 and line["rewards_rejected"] == 0  # step 1: the policy is still the reference
    assert line["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert {"eval_accuracy", "eval_accuracy_0v1", "eval_rewards_margin"} <= set(result.metrics)


def test_precomputed_reference_logprobs_equal_on_the_fly_ones(tiny_base, sample_data, tmp_path):
    # fp32: under bf16 the pre-pass's batches and the steps' round the same sums differently
    settings = dict(data=sample_data, model=str(tiny_base), max_steps=3, precision="fp32", **TINY)
    stored = train_dpo(DPOConfig(out=tmp_path / "stored", **settings))
    live = train_dpo(DPOConfig(out=tmp_path / "live", precompute_reference=False, **settings))
    first, second = parameters(stored.out), parameters(live.out)
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=1e-6)
    assert stored.metrics["eval_accuracy"] == live.metrics["eval_accuracy"]


def test_resume_ends_where_an_uninterrupted_run_ends(tiny_base, sample_data, tmp_path):
    from test_training_control import Interrupt, StopAt

    settings = dict(data=sample_data, model=str(tiny_base), max_steps=6, save_steps=2, loss="ipo", length_normalize=True, **TINY)
    straight = train_dpo(DPOConfig(out=tmp_path / "straight", **settings))
    with pytest.raises(Interrupt):
        train_dpo(DPOConfig(out=tmp_path / "cut", **settings), callbacks=[StopAt(3)])
    resumed = train_dpo(DPOConfig(out=tmp_path / "cut", resume=True, **settings))
    first, second = parameters(straight.out), parameters(resumed.out)
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=1e-6)
    logged = [json.loads(line)["step"] for line in (resumed.out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert logged == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("flags, expected", [([], True), (["--no-precompute-reference"], False), (["--precompute-reference"], True)])
def test_an_option_that_is_on_by_default_can_be_turned_off_on_the_command_line(flags, expected):
    from kochat.cli import build_parser

    args = build_parser("train").parse_args(["train", "dpo", *flags])
    assert getattr(args, "precompute_reference", True) is expected  # absent: the config's default applies
