"""kochat's DPO loss against TRL's `DPOTrainer` on the same model, reference and batch.

    pip install -e '.[bench]'     # TRL: only for this script, never a kochat dependency
    python bench/dpo_vs_trl.py --reference runs/real/sft --policy runs/real/dpo --data runs/real/data

Both sides get the same token ids: kochat's (template, truncation, EOS) split into TRL's
prompt/chosen/rejected ids, collated by TRL's own collator. Without `--policy` the policy is the
reference with seeded noise on its weights (policy = reference gives log 2 on both sides and
proves nothing). Prints loss, implicit rewards, margin and accuracy from each, their largest
differences, and the largest difference of the loss gradients over every weight.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
from pathlib import Path

import datasets
import torch
import transformers
from rich.console import Console
from rich.table import Table

from kochat_data.schema import Kind
from kochat_train import stage_data, stage_models
from kochat_train.dpo import PreferenceCollator, tokenize_preferences
from kochat_train.objectives import dpo_loss, sequence_logprobs
from kochat_train.rm import PAIR_COLUMNS
from kochat_train.sources import load_causal_lm, load_tokenizer
from kochat_train.template import IGNORE_INDEX


def kochat_side(policy, reference, batch: dict, beta: float) -> dict[str, torch.Tensor]:
    chosen, rejected = sequence_logprobs(policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                         batch["labels"]).chunk(2)
    with torch.no_grad():
        ref = sequence_logprobs(reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
    loss, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, *ref.chunk(2), beta)
    return {"loss": loss, "chosen": chosen_rewards, "rejected": rejected_rewards}


def trl_examples(features: datasets.Dataset) -> list[dict[str, list[int]]]:
    """kochat's tokenised pairs as TRL's prompt_ids / chosen_ids / rejected_ids (the prompt is where labels start)."""
    examples = []
    for row in features:
        start = next(i for i, label in enumerate(row["chosen_labels"]) if label != IGNORE_INDEX)
        assert row["chosen_ids"][:start] == row["rejected_ids"][:start], "chosen and rejected share the prompt"
        examples.append({"prompt_ids": row["chosen_ids"][:start], "chosen_ids": row["chosen_ids"][start:],
                         "rejected_ids": row["rejected_ids"][start:]})
    return examples


def trl_side(policy, reference, tokenizer, pairs: datasets.Dataset, examples: list[dict], beta: float, out: Path) -> dict[str, torch.Tensor]:
    import trl  # the optional `bench` extra

    # TRL's DPOConfig turns bf16 autocast on by default (0.1 nat off per sequence here); kochat's side is fp32.
    args = trl.DPOConfig(output_dir=str(out), beta=beta, loss_type=["sigmoid"], report_to="none", use_cpu=True, bf16=False,
                         precompute_ref_log_probs=False, max_length=None)
    # TRL tokenises the text pairs it is given when it is built; the comparison feeds it kochat's ids below.
    text = datasets.Dataset.from_dict({"prompt": pairs["prompt"], "chosen": pairs["chosen"], "rejected": pairs["rejected"]})
    trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=args, processing_class=tokenizer, train_dataset=text)
    batch = trainer.data_collator(examples)
    policy.train()  # TRL records its train metrics; dropout is off on both sides
    loss = trainer.compute_loss(policy, batch)
    metrics = {key: torch.tensor(values[-1]) for key, values in trainer._metrics["train"].items()}
    return {"loss": loss, "metrics": metrics, "completion_tokens": batch["completion_mask"].sum()}


def gradients(loss: torch.Tensor, model) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="an SFT directory (DPO's starting point)")
    parser.add_argument("--policy", type=Path, help="a trained policy; default: the reference with seeded noise")
    parser.add_argument("--data", type=Path, required=True, help="a `kochat data build` directory")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if importlib.util.find_spec("trl") is None:
        raise SystemExit("TRL is not installed: pip install -e '.[bench]'")
    datasets.disable_progress_bars()
    transformers.set_seed(args.seed)

    tokenizer = load_tokenizer(args.reference)
    reference = load_causal_lm(args.reference, tokenizer).eval().requires_grad_(False)
    policy = load_causal_lm(args.policy or args.reference, tokenizer)
    stage_models.disable_dropout(policy)
    if args.policy is None:
        with torch.no_grad():
            for parameter in policy.parameters():
                parameter.add_(0.01 * torch.randn_like(parameter))
    pairs = stage_data.load_stage_data(args.data, Kind.RM, PAIR_COLUMNS, "bench")["eval"].select(range(args.pairs))
    features = tokenize_preferences(pairs, tokenizer, args.max_length)

    ours = kochat_side(policy, reference, PreferenceCollator(tokenizer)(list(features)), args.beta)
    our_gradients = gradients(ours["loss"], policy)
    theirs = trl_side(policy, copy.deepcopy(reference), tokenizer, pairs, trl_examples(features), args.beta,
                      Path("/tmp/kochat-bench-trl"))
    their_gradients = gradients(theirs["loss"], policy)

    margins = ours["chosen"] - ours["rejected"]
    rows = {
        "loss": (ours["loss"], theirs["loss"]),
        "rewards/chosen": (ours["chosen"].mean(), theirs["metrics"]["rewards/chosen"]),
        "rewards/rejected": (ours["rejected"].mean(), theirs["metrics"]["rewards/rejected"]),
        "rewards/margin": (margins.mean(), theirs["metrics"]["rewards/margins"]),
        "rewards/accuracy": ((margins > 0).float().mean(), theirs["metrics"]["rewards/accuracies"]),
    }
    table = Table(title="DPO sigmoid loss: kochat vs TRL DPOTrainer",
                  caption=f"β {args.beta}, {args.pairs} eval pairs, {int(theirs['completion_tokens'])} response tokens, "
                          f"TRL {importlib.metadata.version('trl')}")
    for column in ("", "kochat", "TRL", "|difference|"):
        table.add_column(column, justify="left" if not column else "right")
    for name, (mine, trl_value) in rows.items():
        mine, trl_value = float(mine.detach()), float(trl_value.detach())
        table.add_row(name, f"{mine:.6f}", f"{trl_value:.6f}", f"{abs(mine - trl_value):.2e}")
    gradient_gap = max((our_gradients[name] - their_gradients[name]).abs().max().item() for name in our_gradients)
    largest = max(gradient.abs().max().item() for gradient in our_gradients.values())
    table.add_row("gradient (max over weights)", f"{largest:.6f}", "", f"{gradient_gap:.2e}")
    Console().print(table)


if __name__ == "__main__":
    main()
