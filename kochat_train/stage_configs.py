"""The stage configs, apart from the stages: `kochat train … --help` builds its flags from them
without importing torch (seconds on a busy machine). Each stage module re-exports its own."""

from __future__ import annotations

from dataclasses import dataclass

from kochat_train.config import TrainConfig, option

PRESETS = {
    "tiny": {"vocab_size": 400, "n_layer": 1, "n_embd": 32, "n_head": 2},
    "small": {"vocab_size": 8000, "n_layer": 4, "n_embd": 256, "n_head": 4},
}

PAIR_SETS = ("all", "proxy", "judge")

LOSSES = ("sigmoid", "ipo")


@dataclass
class BaseConfig(TrainConfig):
    preset: str = option("small", f"model size: {', '.join(PRESETS)} (tiny is for tests)")
    vocab_size: int | None = option(None, "BPE vocabulary size, special tokens included (default: the preset's)")
    n_layer: int | None = option(None, "transformer blocks (default: the preset's)")
    n_embd: int | None = option(None, "hidden width (default: the preset's)")
    n_head: int | None = option(None, "attention heads; must divide n_embd (default: the preset's)")
    min_frequency: int = option(2, "pairs seen fewer times are not merged by BPE")
    learning_rate: float = option(1e-3, "peak learning rate (higher than fine-tuning: the weights start random)")
    sampling: str = option("random", "batch order: random (packed blocks all have one length), group_by_length or sequential")

    def resolved(self) -> BaseConfig:
        """The config with preset values in every architecture field left empty."""
        preset = PRESETS.get(self.preset, {})
        return type(self)(**{**vars(self), **{k: v for k, v in preset.items() if getattr(self, k) is None}})

    def problems(self) -> list[str]:
        found = super().problems()
        if self.preset not in PRESETS:
            return found + [f"'preset' must be one of {', '.join(PRESETS)}, got {self.preset!r}"]
        config = self.resolved()
        if config.vocab_size < 300:
            found.append(f"'vocab_size' must be ≥ 300 (256 bytes + special tokens), got {config.vocab_size}")
        if config.n_embd % config.n_head:
            found.append(f"'n_head' ({config.n_head}) must divide 'n_embd' ({config.n_embd})")
        return found


@dataclass
class SFTConfig(TrainConfig):
    model: str | None = option(None, "causal LM to fine-tune: hub name or directory (e.g. `kochat train base` output)")

    def problems(self) -> list[str]:
        return super().problems() + ([] if self.model else ["'model' is required (hub name or directory)"])


@dataclass
class RewardConfig(TrainConfig):
    cpu_bf16_by_default = False  # see TrainConfig: bf16 cost the RM its rank-0-vs-1 accuracy
    model: str | None = option(None, "backbone: an SFT or base directory or hub name (a reward model directory continues training)")
    pairs: str = option("all", "train pairs: all; proxy (all but the judge share: the RM that PPO optimises); or judge "
                        "(the judge share: an RM that referees the policy, never seen by the proxy)")
    judge_share: float = option(0.5, "share of train prompts whose pairs belong to the judge, by a fixed hash of the prompt "
                                "(the same in every run and for every seed)")
    relevance_negatives: int = option(0, "per train prompt, this many extra pairs of its best answer against the best answer "
                                      "of another train prompt (relevance pairs like the data's rank 0 vs 1)")
    freeze_embeddings: bool = option(False, "keep the input embeddings fixed (a pretrained encoder's vocabulary table: 96M of "
                                     "multilingual-e5-small's 118M parameters, most rows never seen in the pairs)")

    def problems(self) -> list[str]:
        found = super().problems() + ([] if self.model else ["'model' is required (SFT or base directory, or hub name)"])
        if self.pairs not in PAIR_SETS:
            found.append(f"'pairs' must be one of {', '.join(PAIR_SETS)}, got {self.pairs!r}")
        if self.relevance_negatives < 0:
            found.append(f"'relevance_negatives' must be ≥ 0, got {self.relevance_negatives}")
        if not 0 < self.judge_share < 1:
            found.append(f"'judge_share' must be in (0, 1), got {self.judge_share}")
        return found


@dataclass
class PPOConfig(TrainConfig):
    sft: str | None = option(None, "SFT model directory: the actor and the frozen reference")
    rm: str | None = option(None, "reward model directory (the proxy): the frozen reward and the critic's initialisation")
    judge: str | None = option(None, "reward model PPO never optimises (`kochat train rm --pairs judge`): it only scores the "
                               "held-out responses of --eval-every, so the curves show where proxy and judge part")
    eval_every: int = option(0, "every N steps (and before the first), answer a fixed set of held-out prompts and log their "
                             "proxy and judge scores and KL (0: never)")
    eval_prompts: int = option(64, "held-out prompts (the build's eval split) answered at each --eval-every")
    batch_size: int = option(16, "prompts per rollout (one PPO step)")
    mini_batch_size: int = option(8, "rollouts per gradient update")
    ppo_epochs: int = option(4, "passes over each rollout batch")
    learning_rate: float = option(1e-5, "AdamW learning rate of the actor")
    critic_learning_rate: float | None = option(None, "AdamW learning rate of the critic (default: 2 × learning_rate: its value "
                                                "head starts from reward scores, not returns, and must catch up faster than the policy moves)")
    max_new_tokens: int = option(48, "response length limit")
    temperature: float = option(1.0, "sampling temperature; the log-probs PPO optimises are those of the tempered distribution")
    top_k: int = option(0, "sample from the k most likely tokens (0: all); anything but 0 makes the updates off-policy")
    top_p: float = option(1.0, "nucleus sampling mass; below 1 makes the updates off-policy")
    kl_coef: float = option(0.1, "β of the per-token KL penalty against the reference (initial value if adaptive)")
    target_kl: float = option(0.0, "adapt β toward this KL per response (0: β stays fixed)")
    kl_horizon: int = option(400, "rollouts over which the adaptive β moves by at most ±20% (400: ±0.8%% a step of 16 "
                             "rollouts, up to ×2.2 or ÷2.2 over the pipeline's 100 steps)")
    gamma: float = option(1.0, "discount of GAE")
    lam: float = option(0.95, "λ of GAE")
    clip_range: float = option(0.2, "ε of the clipped policy ratio")
    value_clip_range: float = option(0.2, "ε of the clipped value change")
    value_coef: float = option(0.1, "weight of the value loss")
    missing_eos_penalty: float = option(1.0, "subtracted from the score of responses cut at max_new_tokens, so that "
                                        "running on past the answer never pays (0: off)")

    def problems(self) -> list[str]:
        found = super().problems()
        found += [f"'{name}' is required" for name in ("sft", "rm") if not getattr(self, name)]
        if self.mini_batch_size < 1 or self.batch_size % max(self.mini_batch_size, 1):
            found.append(f"'mini_batch_size' ({self.mini_batch_size}) must divide 'batch_size' ({self.batch_size})")
        if self.eval_every < 0 or self.eval_prompts < 1:
            found.append(f"'eval_every' must be ≥ 0 and 'eval_prompts' ≥ 1, got {self.eval_every} and {self.eval_prompts}")
        for name in ("ppo_epochs", "max_new_tokens", "kl_horizon"):
            if getattr(self, name) < 1:
                found.append(f"'{name}' must be ≥ 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            found.append(f"'temperature' must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            found.append(f"'top_p' must be in (0, 1], got {self.top_p}")
        if self.kl_coef < 0 or self.target_kl < 0:
            found.append("'kl_coef' and 'target_kl' must be ≥ 0")
        if self.critic_learning_rate is not None and not self.critic_learning_rate > 0:
            found.append(f"'critic_learning_rate' must be > 0, got {self.critic_learning_rate}")
        if self.top_k < 0:
            found.append(f"'top_k' must be ≥ 0, got {self.top_k}")
        return found

    def truncates_sampling(self) -> bool:
        """Top-k/top-p sample from a distribution other than the one whose log-probs PPO optimises."""
        return self.top_k > 0 or self.top_p < 1


@dataclass
class DPOConfig(TrainConfig):
    model: str | None = option(None, "SFT model directory: the policy to train and the frozen reference")
    beta: float = option(0.1, "β: how far from the reference the implicit reward lets the policy move")
    loss: str = option("sigmoid", "sigmoid (Rafailov et al. 2023: −log σ(β·Δ)) or ipo (Azar et al. 2023: (Δ − 1/(2β))²)")
    length_normalize: bool = option(False, "average the log-probs over the response tokens instead of summing them "
                                    "(against DPO's preference for long answers)")
    precompute_reference: bool = option(True, "compute the reference's log-probs once before training (one pass over the "
                                        "pairs) instead of a reference forward at every step")
    pairs: str = option("all", "train pairs: all, proxy or judge (the shares of `kochat train rm --pairs`)")
    judge_share: float = option(0.5, "share of train prompts that belongs to the judge (as in `kochat train rm`)")
    learning_rate: float = option(5e-5, "peak learning rate (linear decay after warmup)")

    def problems(self) -> list[str]:
        found = super().problems() + ([] if self.model else ["'model' is required (an SFT directory)"])
        if not self.beta > 0:
            found.append(f"'beta' must be > 0, got {self.beta}")
        if self.loss not in LOSSES:
            found.append(f"'loss' must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.pairs not in PAIR_SETS:
            found.append(f"'pairs' must be one of {', '.join(PAIR_SETS)}, got {self.pairs!r}")
        return found
