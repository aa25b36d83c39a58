import hashlib
import json
from pathlib import Path

import datasets
import pytest

import kochat_data.build
from kochat_data.build import BuildConfig, build
from kochat_data.errors import InvalidDataError, UsageError
from kochat_data.text import prompt_id
from tests.conftest import write_array, write_lines

PROMPTS = [f"질문 {n}번은 무엇일까요?" for n in range(40)]


@pytest.fixture
def inputs(tmp_path):
    """SFT, RM and PPO files sharing prompts (some with other whitespace), plus duplicates."""
    sft = write_array(tmp_path / "sft.jsonl", [{"prompt": p, "completion": f"답 {i}", "tokens": i} for i, p in enumerate(PROMPTS)]
                      + [{"prompt": PROMPTS[0], "completion": "답 0"}])
    rm = write_array(tmp_path / "rm.jsonl", [
        {"prompt": "  " + p.replace(" ", "\n "), "completion_0": "좋은 답", "completion_1": "나쁜 답", "completion_2": "보통 답",
         "ranking": [0, 2, 1]} for p in PROMPTS[::2]
    ] + [{"prompt": "동점", "completion_0": "a", "completion_1": "b", "ranking": [0, 0]}])
    ppo = write_lines(tmp_path / "ppo.jsonl", [{"prompt": p} for p in PROMPTS[::3]] + [{"prompt": PROMPTS[0]}])
    return {"sft": [sft], "rm": [rm], "ppo": [ppo]}


def load(out: Path, kind: str) -> datasets.DatasetDict:
    return datasets.load_from_disk(str(out / kind))


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_split_is_by_prompt_and_shared_by_every_kind(tmp_path, inputs):
    out = tmp_path / "built"
    build(BuildConfig(out=out, eval_ratio=0.5, **inputs))
    side = {}
    for kind in ("sft", "rm", "ppo"):
        for split, dataset in load(out, kind).items():
            for pid in dataset["prompt_id"]:
                side.setdefault(pid, set()).add(split)
    assert all(len(splits) == 1 for splits in side.values())
    assert {"train"} in side.values() and {"eval"} in side.values()
    # the RM prompt written with other whitespace is the same prompt as in SFT
    rm_ids = set(load(out, "rm")["train"]["prompt_id"]) | set(load(out, "rm")["eval"]["prompt_id"])
    assert prompt_id(PROMPTS[0]) in rm_ids


def test_manifest_adds_up(tmp_path, inputs):
    manifest = build(BuildConfig(out=tmp_path / "built", **inputs))
    assert manifest == json.loads((tmp_path / "built" / "manifest.json").read_text("utf-8"))
    for entry in manifest["inputs"]:
        assert entry["records"] == entry["kept"] + entry["rejected"] + entry["duplicates"]
        assert len(entry["sha256"]) == 64
    sft, rm, ppo = manifest["sft"], manifest["rm"], manifest["ppo"]
    assert (sft["records"], sft["kept"], sft["duplicates"]) == (41, 40, 1)
    assert (ppo["records"], ppo["kept"], ppo["duplicates"]) == (15, 14, 1)
    assert rm["pairs"] == {"possible": 20 * 3 + 1, "ties": 1, "written": 60}
    assert rm["records_without_pairs"] == 1
    assert sum(rm["rows"].values()) == rm["pairs"]["written"]
    assert sum(sft["rows"].values()) == sft["kept"]
    assert manifest["ties"] == 1 and manifest["duplicates"] == 2 and manifest["rejects"] == 0


def test_pairs_have_the_schema_and_chosen_is_better(tmp_path, inputs):
    build(BuildConfig(out=tmp_path / "built", **inputs))
    rows = load(tmp_path / "built", "rm")["train"]
    assert rows.column_names == ["prompt", "chosen", "rejected", "chosen_rank", "rejected_rank", "prompt_id", "extra", "prompt_messages"]
    assert all(c < r for c, r in zip(rows["chosen_rank"], rows["rejected_rank"]))
    assert "좋은 답" not in rows["rejected"]
    assert json.loads(load(tmp_path / "built", "sft")["train"][0]["extra"]).keys() <= {"tokens"}


def test_same_inputs_and_seed_give_byte_identical_output(tmp_path, inputs):
    build(BuildConfig(out=tmp_path / "one", **inputs))
    build(BuildConfig(out=tmp_path / "two", **inputs))
    build(BuildConfig(out=tmp_path / "other", seed=7, **inputs))
    assert tree_digest(tmp_path / "one") == tree_digest(tmp_path / "two")
    assert load(tmp_path / "one", "sft")["train"]["prompt"] != load(tmp_path / "other", "sft")["train"]["prompt"]


def test_pairs_command_keeps_the_split_of_a_build_with_the_same_seed(tmp_path, inputs, run_cli):
    build(BuildConfig(out=tmp_path / "built", seed=3, eval_ratio=0.3, **inputs))
    code, _, _ = run_cli("data", "pairs", "--rm", inputs["rm"][0], "--out", tmp_path / "pairs", "--seed", 3, "--eval-ratio", 0.3)
    assert code == 0
    for split in ("train", "eval"):
        assert sorted(load(tmp_path / "pairs", "rm")[split]["prompt_id"]) == sorted(load(tmp_path / "built", "rm")[split]["prompt_id"])
    assert not (tmp_path / "pairs" / "sft").exists()


def test_invalid_records_fail_the_build_or_go_to_rejects(tmp_path, inputs):
    bad = write_lines(tmp_path / "bad.jsonl", [{"prompt": "ok", "completion": "네"}, {"prompt": "", "completion": "x"}])
    with pytest.raises(InvalidDataError) as failure:
        build(BuildConfig(out=tmp_path / "failed", sft=[bad]))
    assert failure.value.lines()[0] == f"{bad}:2: record 2: field 'prompt': expected non-empty text, got empty string"
    assert not (tmp_path / "failed").exists()

    manifest = build(BuildConfig(out=tmp_path / "skipped", sft=[bad], on_invalid="skip"))
    rejects = [json.loads(line) for line in (tmp_path / "skipped" / "rejects.jsonl").read_text("utf-8").splitlines()]
    assert rejects == [{"file": str(bad), "index": 2, "line": 2, "reason": "field 'prompt': expected non-empty text, got empty string",
                        "record": {"prompt": "", "completion": "x"}}]
    assert manifest["rejects"] == 1 and manifest["sft"]["kept"] == 1


def test_existing_output_is_kept_unless_overwrite_and_untouched_by_a_failed_run(tmp_path, inputs, monkeypatch):
    out = tmp_path / "built"
    build(BuildConfig(out=out, **inputs))
    before = tree_digest(out)
    with pytest.raises(UsageError, match="pass --overwrite"):
        build(BuildConfig(out=out, **inputs))

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(kochat_data.build, "_write_rejects", crash)
    with pytest.raises(RuntimeError):
        build(BuildConfig(out=out, overwrite=True, seed=9, **inputs))
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".built")) == []

    monkeypatch.undo()
    build(BuildConfig(out=out, overwrite=True, seed=9, **inputs))
    assert tree_digest(out) != before


def test_config_problems_are_reported_together(tmp_path):
    with pytest.raises(UsageError) as failure:
        build(BuildConfig(out=tmp_path / "x", eval_ratio=1.5, on_invalid="maybe", seed=-1))
    assert len(failure.value.lines()[0].splitlines()) == 4


def test_an_empty_split_loads_with_plain_datasets(tmp_path, inputs):
    build(BuildConfig(out=tmp_path / "out", eval_ratio=0.0, **inputs))
    for kind in ("sft", "rm", "ppo"):
        splits = load(tmp_path / "out", kind)
        assert len(splits["eval"]) == 0 and len(splits["train"]) > 0 and splits["eval"].column_names == splits["train"].column_names


def test_the_direct_arrow_layout_loads_as_save_to_disk_writes_it(tmp_path, inputs):
    build(BuildConfig(out=tmp_path / "built", eval_ratio=0.3, **inputs))
    for kind in ("sft", "rm", "ppo"):
        ours = load(tmp_path / "built", kind)
        datasets.DatasetDict({split: datasets.Dataset(ours[split].data.table, info=ours[split].info)
                              for split in ours}).save_to_disk(str(tmp_path / "library" / kind))
        theirs = load(tmp_path / "library", kind)
        assert list(ours) == list(theirs) == ["train", "eval"]
        for split in ours:
            assert ours[split].features == theirs[split].features == kochat_data.build.FEATURES[kochat_data.build.Kind(kind)]
            assert ours[split].to_list() == theirs[split].to_list() and len(ours[split]) > 0
