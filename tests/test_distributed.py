"""torchrun data parallelism on CPU (gloo): two processes end where one process with the same global batch ends."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY

STEPS = 4
LEARNING_RATE = 1e-3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kochat(processes: int, *args) -> subprocess.CompletedProcess:
    """`kochat ARGS` alone, or under torchrun with `processes` CPU processes."""
    launcher = [sys.executable, "-m", "kochat"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(free_port()),
        "-m", "kochat"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in both runs (torchrun sets 1)
    done = subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def logged_steps_of(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text("utf-8").splitlines()]


def logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text("utf-8").splitlines() if "loss" in json.loads(line)]


@pytest.fixture(scope="module")
def base_without_dropout(tiny_base, tmp_path_factory) -> Path:
    """The tiny base with dropout off: otherwise each process draws its own dropout masks."""
    out = tmp_path_factory.mktemp("nodrop") / "base"
    shutil.copytree(tiny_base, out, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((out / "config.json").read_text("utf-8"))
    config.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)
    (out / "config.json").write_text(json.dumps(config), "utf-8")
    return out


def logged(out: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text("utf-8").splitlines() if key in json.loads(line)]


def assert_same_training(one: dict[str, torch.Tensor], other: dict[str, torch.Tensor], stage: str, tolerance: float) -> None:
    for name in one:
        difference = (one[name] - other[name]).abs().max().item()
        if stage == "rm" and name == "transformer.ln_f.bias":
            # The pairwise loss does not depend on it (it shifts both rewards alike): its true gradient
            # is 0, and Adam turns rounding noise of ~1e-9 into steps of up to the learning rate.
            assert difference <= LEARNING_RATE * STEPS
        elif stage == "dpo" and name == "transformer.wte.weight":
            # The same for the (tied) embedding rows of tokens the pairs barely touch: a difference of
            # log-ratios leaves them gradients near 0, which Adam scales up. Seen: 1 row of 400 at 3e-5.
            rows = (one[name] - other[name]).abs().max(dim=1).values
            assert difference <= LEARNING_RATE * STEPS and (rows > 1e-5).float().mean() <= 0.01
        else:
            assert difference < tolerance, name


def sharding_record(out: Path) -> dict:
    return json.loads((out / "kochat_stage.json").read_text("utf-8"))["metrics"]["sharding"]


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo"])
def test_two_processes_match_one_with_the_same_global_batch(stage, base_without_dropout, sample_data, tmp_path):
    """Replicated (DDP) and sharded (`--sharding fsdp`: FSDP2, loaded sharded by transformers): two processes with half
    the batch each end where one process ends."""
    common = ["train", stage, "--data", sample_data, "--model", base_without_dropout, "--max-steps", STEPS,
              "--max-length", TINY["max_length"], "--learning-rate", LEARNING_RATE, "--sampling", "sequential", "--logging-steps", 1,
              "--precision", "fp32"]  # equal to 1e-5 needs fp32: bf16 rounds sums differently in another order
    kochat(1, *common, "--out", tmp_path / "one", "--batch-size", 8)
    kochat(2, *common, "--out", tmp_path / "two", "--batch-size", 4)  # 2 × 4 = the same 8 examples per step
    kochat(2, *common, "--out", tmp_path / "sharded", "--batch-size", 4, "--sharding", "fsdp")

    one, two, start = weights(tmp_path / "one"), weights(tmp_path / "two"), weights(base_without_dropout)
    assert max((one[name] - start[name]).abs().max().item() for name in start) > 1e-3  # training moved the weights
    assert_same_training(one, two, stage, tolerance=1e-5)
    # Sharded: the gradients are reduce-scattered in another order; seen up to 1.8e-5 after 4 Adam steps (RM).
    assert_same_training(one, weights(tmp_path / "sharded"), stage, tolerance=1e-4)
    assert logged(tmp_path / "sharded", "loss") == pytest.approx(logged(tmp_path / "one", "loss"), abs=1e-5)
    record = sharding_record(tmp_path / "sharded")
    assert record["kind"] == "fsdp" and record["processes"] == 2 and 0.45 <= record["rank0_local_share"] <= 0.55
    assert "sharding" not in json.loads((tmp_path / "two" / "kochat_stage.json").read_text("utf-8"))["metrics"]
    # rank 0 alone wrote the metrics: every step once
    assert logged_steps(tmp_path / "two") == list(range(1, STEPS + 1))
    assert logged_steps(tmp_path / "sharded") == list(range(1, STEPS + 1))
    assert (tmp_path / "two" / "kochat_stage.json").is_file()


def test_a_sharded_trainer_stage_checkpoints_its_shards_and_resumes_exactly(base_without_dropout, sample_data, tmp_path):
    """SFT under `--sharding fsdp`: each checkpoint holds the shards each process wrote (no gathered weights), a run
    resumed from its first checkpoint ends exactly where the uninterrupted run ends, and the output is a plain
    `save_pretrained` directory."""
    from transformers import AutoModelForCausalLM

    common = ["train", "sft", "--data", sample_data, "--model", base_without_dropout, "--max-steps", STEPS, "--save-steps", 2,
              "--max-length", TINY["max_length"], "--learning-rate", LEARNING_RATE, "--sharding", "fsdp", "--precision", "fp32",
              "--sampling", "sequential", "--logging-steps", 1]
    kochat(2, *common, "--out", tmp_path / "straight", "--batch-size", 6)
    checkpoint = tmp_path / "straight" / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "shards" / ".metadata").is_file() and not list(checkpoint.glob("*.safetensors"))
    for resumed in ("resumed", "resumed_on_three"):
        shutil.copytree(tmp_path / "straight", tmp_path / resumed)
        shutil.rmtree(tmp_path / resumed / "checkpoints" / f"checkpoint-{STEPS}")  # as if killed after step 2
    kochat(2, *common, "--out", tmp_path / "resumed", "--resume", "--batch-size", 6)
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert max((straight[name] - resumed[name]).abs().max().item() for name in straight) == 0
    # On three processes (3 × 4 = the same 12 examples per step) the shards of weights and AdamW state are cut anew
    # from the two processes' checkpoint; the run goes on where the two-process run went (another reduction order).
    kochat(3, *common, "--out", tmp_path / "resumed_on_three", "--resume", "--batch-size", 4)
    assert_same_training(straight, weights(tmp_path / "resumed_on_three"), "sft", tolerance=1e-4)
    assert logged(tmp_path / "resumed_on_three", "loss")[-2:] == pytest.approx(logged(tmp_path / "straight", "loss")[-2:], abs=1e-5)
    assert sharding_record(tmp_path / "resumed_on_three")["processes"] == 3
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "straight")
    assert torch.equal(loaded.transformer.wte.weight, straight["transformer.wte.weight"])


def test_sharded_bf16_computes_in_bf16_and_keeps_and_reduces_fp32(base_without_dropout, sample_data, tmp_path):
    """`--precision bf16` with `--sharding fsdp`: FSDP's mixed-precision policy (bf16 gathered weights, fp32 gradient
    reduction into fp32 shards) trains as one process under bf16 autocast does, to bf16's precision."""
    common = ["train", "sft", "--data", sample_data, "--model", base_without_dropout, "--max-steps", STEPS, "--max-length",
              TINY["max_length"], "--learning-rate", LEARNING_RATE, "--sampling", "sequential", "--logging-steps", 1, "--precision", "bf16"]
    kochat(1, *common, "--out", tmp_path / "one", "--batch-size", 8)
    kochat(2, *common, "--out", tmp_path / "sharded", "--batch-size", 4, "--sharding", "fsdp")
    record = sharding_record(tmp_path / "sharded")
    assert record["compute_dtype"] == "bfloat16" and record["reduce_dtype"] == "float32"
    sharded = weights(tmp_path / "sharded")
    assert {tensor.dtype for tensor in sharded.values()} == {torch.float32}  # the shards AdamW steps stay fp32
    # The policy computes layer norms and softmax in bf16 too, where autocast keeps them fp32: seen 0.4% on one
    # step's loss and 3e-3 on the weights after 4 steps.
    assert logged(tmp_path / "sharded", "loss") == pytest.approx(logged(tmp_path / "one", "loss"), rel=1e-2)
    assert_same_training(weights(tmp_path / "one"), sharded, "sft", tolerance=1e-2)


def test_a_sharded_base_trains_as_a_replicated_one(sample_data, tmp_path):
    """The base stage's fresh model, sharded in memory, trains as two replicated processes do (the same dropout
    masks per process)."""
    common = ["train", "base", "--data", sample_data, "--preset", "tiny", "--max-steps", 2, "--max-length", TINY["max_length"],
              "--batch-size", 4, "--learning-rate", LEARNING_RATE, "--sampling", "sequential", "--precision", "fp32"]
    kochat(2, *common, "--out", tmp_path / "two")
    kochat(2, *common, "--out", tmp_path / "sharded", "--sharding", "fsdp")
    two, sharded = weights(tmp_path / "two"), weights(tmp_path / "sharded")
    assert max((two[name] - sharded[name]).abs().max().item() for name in two) < 1e-5
    assert 0.45 <= sharding_record(tmp_path / "sharded")["rank0_local_share"] <= 0.55


def test_ppo_with_two_processes_matches_one(tiny_base, tiny_rm, sample_data, tmp_path):
    """Greedy decoding (top-k 1) makes the rollouts the same however the prompts are split; the
    advantages are whitened and the losses token-weighted over the global batch."""
    common = ["train", "ppo", "--data", sample_data, "--sft", tiny_base, "--rm", tiny_rm, "--max-steps", 3, "--ppo-epochs", 2,
              "--top-k", 1, "--max-new-tokens", 8, "--learning-rate", LEARNING_RATE, "--max-length", TINY["max_length"],
              "--precision", "fp32"]  # bf16 would round the split batches' sums differently
    kochat(1, *common, "--out", tmp_path / "one", "--batch-size", 8, "--mini-batch-size", 8)
    kochat(2, *common, "--out", tmp_path / "two", "--batch-size", 4, "--mini-batch-size", 4)
    # Sharded: actor and critic each loaded sharded, the rollouts generated by the sharded actor.
    kochat(2, *common, "--out", tmp_path / "sharded", "--batch-size", 4, "--mini-batch-size", 4, "--sharding", "fsdp")
    for run in ("two", "sharded"):
        for model in ("", "critic"):
            one, other = weights(tmp_path / "one" / model), weights(tmp_path / run / model)
            # 6 Adam updates at lr 1e-3 from rounding-level gradient differences: ~7e-6 observed (sharded: 3e-6)
            assert max((one[name] - other[name]).abs().max().item() for name in one) < 5e-5
        assert logged_steps_of(tmp_path / run) == [1, 2, 3]
        # Greedy answers of the (sharded) actor are the unsharded model's: the same rewards at every step.
        assert logged(tmp_path / run, "rm_score") == pytest.approx(logged(tmp_path / "one", "rm_score"), abs=1e-5)
    assert 0.45 <= sharding_record(tmp_path / "sharded")["rank0_local_share"] <= 0.55


def test_grpo_with_two_processes_matches_one_and_accumulation(base_without_dropout, sample_data, tmp_path):
    """The same saved batch of grouped answers: one process in one micro-batch, one process in micro-batches of 3
    (accumulation), and two processes with half the groups each, replicated (DDP-style) or sharded (FSDP2), end at
    the same weights (advantages with the global batch std, truncated answers masked, the loss over the global batch)."""
    from kochat_train.grpo import GRPOConfig, GRPOTrainer

    config = GRPOConfig(data=sample_data, out=tmp_path / "unused", sft=str(base_without_dropout), reward=["eos"], group_size=4,
                        max_new_tokens=12, precision="fp32", device="cpu")
    torch.manual_seed(0)
    prompts = ["안녕", "오늘 저녁 메뉴로 뭐가 좋을까요?", "주말에 뭐 해?", "고마워"]
    torch.save({"prompts": prompts, "rollout": GRPOTrainer(config).rollout(prompts)[0]}, tmp_path / "batch.pt")
    script = Path(__file__).parent / "torchrun_grpo_update.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    for processes, micro, name, sharding in ((1, 16, "one", "none"), (1, 3, "accumulated", "none"), (2, 16, "two", "none"),
                                             (2, 16, "sharded", "fsdp")):
        launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                                            "--master_port", str(free_port())]
        done = subprocess.run([*launcher, str(script), str(base_without_dropout), str(sample_data), str(tmp_path / "batch.pt"),
                               str(tmp_path / name), str(micro), sharding], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one, start = weights(tmp_path / "one"), weights(base_without_dropout)
    assert max((one[name] - start[name]).abs().max().item() for name in one if name in start) > 1e-3
    for other in ("accumulated", "two", "sharded"):
        saved = weights(tmp_path / other)
        assert set(saved) - set(one) <= {"lm_head.weight"}  # transformers' sharded save also writes the tied copy
        # Rounding differs with the split of the batch, and grows with the step a weight took: each weight may differ
        # by 1e-5 plus 0.1% of its own update (seen on a CPU without AVX-512, where MKL's kernels round differently:
        # 1.04e-5 on an update of 1.5e-2). A wrong reduction (a local mean, a missing all-reduce) moves weights by a
        # share of the update itself, far past this.
        excess = {name: ((one[name] - tensor).abs() - 1e-3 * (one[name] - start[name]).abs()).max().item()
                  for name, tensor in saved.items() if name in one}
        # The attention's key bias shifts every score of a query alike, so softmax leaves it a true gradient of 0;
        # Adam turns the processes' different rounding noise (~1e-9) there into steps up to ~1e-5 (seen: 2e-5).
        assert excess.pop("transformer.h.0.attn.c_attn.bias") < 5e-5
        assert max(excess.values()) < 1e-5, (other, excess)


def test_grpo_under_torchrun_logs_each_step_once(tiny_base, sample_data, tmp_path):
    kochat(2, "train", "grpo", "--data", sample_data, "--sft", tiny_base, "--reward", "eos", "--reward", "hangul", "--max-steps", 2,
           "--batch-size", 2, "--group-size", 2, "--max-new-tokens", 6, "--max-length", TINY["max_length"], "--eval-every", 2,
           "--eval-prompts", 4, "--out", tmp_path / "two")
    logged = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text("utf-8").splitlines()]
    assert [line["step"] for line in logged if "reward" in line] == [1, 2]
    assert [line["step"] for line in logged if "eval_median_eojeol" in line] == [0, 2]


def test_a_llama_with_lora_and_its_chat_template_trains_alike_on_two_processes(tiny_llama, byo_data, tmp_path):
    """DPO on a SentencePiece Llama with LoRA and --template chat, on the conversational fixtures: the merged weights
    of two processes equal one process's (DDP without find_unused_parameters: every trainable parameter has a gradient)."""
    common = ["train", "dpo", "--data", byo_data, "--model", tiny_llama, "--template", "chat", "--lora-rank", 2, "--max-steps", 3,
              "--max-length", TINY["max_length"], "--learning-rate", LEARNING_RATE, "--sampling", "sequential", "--precision", "fp32"]
    kochat(1, *common, "--out", tmp_path / "one", "--batch-size", 8)
    kochat(2, *common, "--out", tmp_path / "two", "--batch-size", 4)
    one, two, start = weights(tmp_path / "one"), weights(tmp_path / "two"), weights(tiny_llama)
    assert max((one[name] - start[name]).abs().max().item() for name in start) > 1e-4
    assert max((one[name] - two[name]).abs().max().item() for name in one) < 1e-5


def test_sharded_grpo_records_its_shards_resumes_exactly_and_saves_a_plain_model(tiny_base, sample_data, tmp_path):
    """`--sharding fsdp` under torchrun: rank 0 holds about half the policy (DTensor local shapes, kochat_stage.json),
    generation and the held-out evaluation run on the sharded policy, a run stopped after step 1 and resumed ends
    where an uninterrupted one ends, and the output loads with plain from_pretrained. One process is refused."""
    from transformers import AutoModelForCausalLM

    common = ["train", "grpo", "--data", sample_data, "--sft", tiny_base, "--reward", "eos", "--reward", "hangul", "--sharding", "fsdp",
              "--batch-size", 2, "--group-size", 2, "--max-new-tokens", 6, "--max-length", TINY["max_length"], "--eval-every", 2,
              "--eval-prompts", 4, "--save-steps", 1, "--precision", "fp32"]
    kochat(2, *common, "--max-steps", 2, "--out", tmp_path / "straight")
    kochat(2, *common, "--max-steps", 1, "--out", tmp_path / "resumed")
    kochat(2, *common, "--max-steps", 2, "--out", tmp_path / "resumed", "--resume")
    record = json.loads((tmp_path / "straight" / "kochat_stage.json").read_text("utf-8"))["metrics"]["sharding"]
    assert record["kind"] == "fsdp" and record["processes"] == 2 and 0.45 <= record["rank0_local_share"] <= 0.55
    assert record["units"] == 2  # the tiny base's one block, and the root (embeddings, final norm, head)
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert max((straight[name] - resumed[name]).abs().max().item() for name in straight) == 0
    logged = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text("utf-8").splitlines()]
    assert [line["step"] for line in logged if "eval_median_eojeol" in line] == [0, 2]
    AutoModelForCausalLM.from_pretrained(tmp_path / "straight")
    alone = subprocess.run([sys.executable, "-m", "kochat", *map(str, [*common, "--max-steps", 1, "--out", tmp_path / "alone"])],
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 2 and "--sharding fsdp: needs two or more processes" in alone.stderr
    from kochat_data.errors import UsageError
    from kochat_train.sharding import distributed_config

    with pytest.raises(UsageError, match="on cpu they are in CPU memory already"):
        distributed_config("fsdp", offload=True, device="cpu")
