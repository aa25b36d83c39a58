"""The stage configs, apart from the stages: `kochat train … --help` builds its flags from them
without importing torch (seconds on a busy machine). Each stage module re-exports its own."""

from __future__ import annotations

from dataclasses import dataclass

from kochat_train.config import TrainConfig, one_of, option, within_open
from kochat_train.decoding_flags import decoding_problems

PRESETS = {
    "tiny": {"vocab_size": 400, "n_layer": 1, "n_embd": 32, "n_head": 2},
    "small": {"vocab_size": 8000, "n_layer": 4, "n_embd": 256, "n_head": 4},
}

PAIR_SETS = ("all", "proxy", "judge")

LOSSES = ("sigmoid", "ipo")



@dataclass
class BaseConfig(TrainConfig):
    preset: str = option("small", f"model size: {', '.join(PRESETS)} (tiny is for tests)")
    vocab_size: int | None = option(None, "BPE vocabulary size, special tokens included: up to 7/8 of it the corpus's "
                                    "most frequent characters, the rest their merges (default: the preset's)")
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
        if self.template not in (None, "kochatgpt") or self.system_prompt is not None:
            found.append("'template': the offline base is trained on the kochatgpt template only")
        config = self.resolved()
        if config.vocab_size < 300:
            found.append(f"'vocab_size' must be ≥ 300 (the most frequent characters, their merges and 4 special tokens), got {config.vocab_size}")
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
                        "(the judge share: an RM that referees the policy, never seen by the proxy)", check=one_of(*PAIR_SETS))
    judge_share: float = option(0.5, "share of train prompts whose pairs belong to the judge, by a fixed hash of the prompt "
                                "(the same in every run and for every seed)", check=within_open(0, 1))
    relevance_negatives: int = option(0, "per train prompt, this many extra pairs of its best answer against the best answer "
                                      "of another train prompt (relevance pairs like the data's rank 0 vs 1)")
    freeze_embeddings: bool = option(False, "keep the input embeddings fixed (a pretrained encoder's vocabulary table: 96M of "
                                     "multilingual-e5-small's 118M parameters, most rows never seen in the pairs)")

    def problems(self) -> list[str]:
        found = super().problems() + ([] if self.model else ["'model' is required (SFT or base directory, or hub name)"])
        if self.relevance_negatives < 0:
            found.append(f"'relevance_negatives' must be ≥ 0, got {self.relevance_negatives}")
        return found


ADVANTAGE_ESTIMATORS = ("group", "group-nostd", "loo", "batch")
LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_PLACES = ("loss", "reward")


@dataclass
class OnlineRLConfig(TrainConfig):
    """What PPO and GRPO share: the policy from SFT, sampling, the judge's over-optimisation curves and the
    reward-hacking alarms (checked at every --eval-every against the starting model's held-out answers)."""

    sft: str | None = option(None, "SFT model directory: the policy and the frozen reference")
    judge: str | None = option(None, "reward model the policy never optimises (`kochat train rm --pairs judge`): it only scores "
                               "the held-out answers of --eval-every, so the curves show where proxy and judge part")
    eval_every: int = option(0, "every N steps (and before the first), answer a fixed set of held-out prompts, log their reward, "
                             "judge score, KL and length, and check for reward hacking (0: never)")
    eval_prompts: int = option(64, "held-out prompts (the build's eval split) answered at each --eval-every")
    max_new_tokens: int = option(48, "response length limit")
    temperature: float = option(1.0, "sampling temperature; the log-probs optimised are those of the tempered distribution")
    top_k: int = option(0, "sample from the k most likely tokens (0: all); anything but 0 makes the updates off-policy")
    top_p: float = option(1.0, "nucleus sampling mass; below 1 makes the updates off-policy")
    missing_eos_penalty: float = option(1.0, "subtracted from the reward of responses cut at max_new_tokens, so that "
                                        "running on past the answer never pays (0: off)")
    alarm_length_ratio: float = option(3.0, "alarm when the held-out answers' median length (eojeol) falls below 1/R or "
                                       "rises above R × the starting model's")
    alarm_share_rise: float = option(0.2, "alarm when the share of answers without Hangul, or with loops, rises by more than this")
    alarm_kl: float = option(10.0, "alarm when the held-out answers' KL to the reference exceeds this (nats per answer)")
    alarm_judge_drop: float = option(0.1, "alarm when the reward rises while the judge's mean falls by more than this")
    stop_on_hacking: bool = option(False, "stop at the first alarm (the last checkpoint is kept; exit 4)")

    def problems(self) -> list[str]:
        found = super().problems() + (["'sft' is required"] if not self.sft else [])
        if self.eval_every < 0 or self.eval_prompts < 1:
            found.append(f"'eval_every' must be ≥ 0 and 'eval_prompts' ≥ 1, got {self.eval_every} and {self.eval_prompts}")
        found += decoding_problems({"do_sample": True, "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                                    "top_k": self.top_k, "top_p": self.top_p})
        if not (self.alarm_length_ratio > 1 and self.alarm_share_rise > 0 and self.alarm_kl > 0 and self.alarm_judge_drop >= 0):
            found.append("alarm thresholds: 'alarm_length_ratio' must be > 1, 'alarm_share_rise' and 'alarm_kl' > 0, "
                         "'alarm_judge_drop' ≥ 0")
        return found

    def truncates_sampling(self) -> bool:
        """Top-k/top-p sample from a distribution other than the one whose log-probs are optimised."""
        return self.top_k > 0 or self.top_p < 1


@dataclass
class PPOConfig(OnlineRLConfig):
    rm: str | None = option(None, "reward model directory (the proxy): the frozen reward and the critic's initialisation")
    batch_size: int = option(16, "prompts per rollout (one PPO step)")
    mini_batch_size: int = option(8, "rollouts per gradient update")
    ppo_epochs: int = option(4, "passes over each rollout batch")
    learning_rate: float = option(1e-5, "AdamW learning rate of the actor")
    critic_learning_rate: float | None = option(None, "AdamW learning rate of the critic (default: 2 × learning_rate: its value "
                                                "head starts from reward scores, not returns, and must catch up faster than the policy moves)")
    kl_coef: float = option(0.1, "β of the per-token KL penalty against the reference (initial value if adaptive)")
    target_kl: float = option(0.0, "adapt β toward this KL per response (0: β stays fixed)")
    kl_horizon: int = option(400, "rollouts over which the adaptive β moves by at most ±20% (400: ±0.8%% a step of 16 "
                             "rollouts, up to ×2.2 or ÷2.2 over the pipeline's 100 steps)")
    gamma: float = option(1.0, "discount of GAE")
    lam: float = option(0.95, "λ of GAE")
    clip_range: float = option(0.2, "ε of the clipped policy ratio")
    value_clip_range: float = option(0.2, "ε of the clipped value change")
    value_coef: float = option(0.1, "weight of the value loss")

    def problems(self) -> list[str]:
        found = super().problems() + (["'rm' is required"] if not self.rm else [])
        if self.mini_batch_size < 1 or self.batch_size % max(self.mini_batch_size, 1):
            found.append(f"'mini_batch_size' ({self.mini_batch_size}) must divide 'batch_size' ({self.batch_size})")
        for name in ("ppo_epochs", "kl_horizon"):
            if getattr(self, name) < 1:
                found.append(f"'{name}' must be ≥ 1, got {getattr(self, name)}")
        if self.kl_coef < 0 or self.target_kl < 0:
            found.append("'kl_coef' and 'target_kl' must be ≥ 0")
        if self.critic_learning_rate is not None and not self.critic_learning_rate > 0:
            found.append(f"'critic_learning_rate' must be > 0, got {self.critic_learning_rate}")
        return found


@dataclass
class GRPOConfig(OnlineRLConfig):
    reward: list[str] = option([], "a reward, NAME[=ARG][:WEIGHT]: rm=DIR (a kochat reward model), length=EOJEOL, "
                               "hangul, eos, repetition, overlap, relevance[=ENCODER], or module:function (prompts, responses → "
                               "floats); the total is Σ weight × reward")
    batch_size: int = option(4, "prompts per step per process; each is answered --group-size times")
    group_size: int = option(4, "responses sampled per prompt (G); their rewards are compared within the group")
    micro_batch_size: int = option(16, "responses per forward/backward (gradient accumulation: the step is the same for any size)")
    advantage: str = option("group-nostd", "group-nostd: r − group mean (Dr. GRPO); group: (r − group mean) / group std (GRPO); "
                            "loo: r − mean of the other G − 1 (RLOO); batch: r − group mean, / std over the global batch. "
                            "Not group by default: with a reward model whose scores barely differ within a group, the std "
                            "magnifies their noise (on the shared data: KL 29.6 to SFT and a judge gain of −0.13 after 100 steps)")
    loss_agg: str = option("token-mean", "token-mean (DAPO: every token alike), seq-mean-token-mean (GRPO: each answer alike), "
                           "seq-mean-token-sum-norm (Dr. GRPO: token sums / max_new_tokens)")
    clip_low: float = option(0.2, "ε_low: the ratio π/π_old is clipped below at 1 − ε_low")
    clip_high: float = option(0.2, "ε_high: clipped above at 1 + ε_high (DAPO's clip-higher: 0.28)")
    iterations: int = option(1, "optimizer steps on each batch of rollouts (μ); the first is on-policy (ratio exactly 1)")
    mask_truncated: bool = option(False, "leave answers cut at max_new_tokens out of the loss (DAPO's overlong filtering) "
                                  "instead of subtracting --missing-eos-penalty from their reward")
    beta: float = option(0.04, "weight of the KL to the frozen reference (0: no reference model is loaded)")
    kl_in: str = option("loss", "loss: β·k3 per token added to the loss (GRPO); reward: β·Σ k1 subtracted from each "
                        "answer's reward before the advantages (RLOO, PPO)")
    learning_rate: float = option(1e-5, "AdamW learning rate (constant)")
    def problems(self) -> list[str]:
        found = super().problems()
        if not self.reward:
            found.append("'reward' is required (e.g. --reward rm=DIR)")
        if self.group_size < 2:
            found.append(f"'group_size' must be ≥ 2 (rewards are compared within a group), got {self.group_size}")
        if self.micro_batch_size < 1 or self.iterations < 1:
            found.append(f"'micro_batch_size' and 'iterations' must be ≥ 1, got {self.micro_batch_size} and {self.iterations}")
        for name, allowed in (("advantage", ADVANTAGE_ESTIMATORS), ("loss_agg", LOSS_AGGREGATIONS), ("kl_in", KL_PLACES)):
            if getattr(self, name) not in allowed:
                found.append(f"'{name}' must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            found.append(f"'clip_low' must be in [0, 1) and 'clip_high' ≥ 0, got {self.clip_low} and {self.clip_high}")
        if self.beta < 0:
            found.append(f"'beta' must be ≥ 0, got {self.beta}")
        return found


@dataclass
class RLOOConfig(GRPOConfig):
    """RLOO is GRPO's stage with a leave-one-out baseline and the KL in the reward (Ahmadian et al. 2024)."""

    advantage: str = option("loo", GRPOConfig.__dataclass_fields__["advantage"].metadata["doc"])
    kl_in: str = option("reward", GRPOConfig.__dataclass_fields__["kl_in"].metadata["doc"])


@dataclass
class DPOConfig(TrainConfig):
    model: str | None = option(None, "SFT model directory: the policy to train and the frozen reference")
    beta: float = option(0.1, "β: how far from the reference the implicit reward lets the policy move")
    loss: str = option("sigmoid", "sigmoid (Rafailov et al. 2023: −log σ(β·Δ)) or ipo (Azar et al. 2023: (Δ − 1/(2β))²)")
    length_normalize: bool = option(False, "average the log-probs over the response tokens instead of summing them "
                                    "(against DPO's preference for long answers)")
    precompute_reference: bool = option(True, "compute the reference's log-probs once before training (one pass over the "
                                        "pairs) instead of a reference forward at every step")
    pairs: str = option("all", "train pairs: all, proxy or judge (the shares of `kochat train rm --pairs`)", check=one_of(*PAIR_SETS))
    judge_share: float = option(0.5, "share of train prompts that belongs to the judge (as in `kochat train rm`)",
                                check=within_open(0, 1))
    learning_rate: float = option(5e-5, "peak learning rate (linear decay after warmup)")

    def problems(self) -> list[str]:
        found = super().problems() + ([] if self.model else ["'model' is required (an SFT directory)"])
        if not self.beta > 0:
            found.append(f"'beta' must be > 0, got {self.beta}")
        if self.loss not in LOSSES:
            found.append(f"'loss' must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        return found
