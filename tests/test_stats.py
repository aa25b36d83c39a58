from kochat_data.stats import collect_stats
from tests.conftest import write_array, write_lines


def test_raw_file_report_counts_duplicates_bias_ties_and_leaks(tmp_path):
    rm = write_array(tmp_path / "rm.json", [
        {"prompt": "질문 하나", "completion_0": "좋아요", "completion_1": "bad", "ranking": [0, 1]},
        {"prompt": "질문  하나", "completion_0": "좋아요", "completion_1": "bad", "ranking": [0, 1]},
        {"prompt": "질문 하나", "completion_0": "좋아요", "completion_1": "bad", "ranking": [0, 1]},
        {"prompt": "질문 둘\", 'completion': '답'", "completion_0": "x", "completion_1": "y", "completion_2": "z", "ranking": [1, 0, 0]},
    ])
    ppo = write_lines(tmp_path / "ppo.jsonl", [{"prompt": "질문 하나"}, {"prompt": "other"}])
    report = collect_stats([rm, ppo])
    rm_report, ppo_report = report["sources"]
    assert rm_report["duplicates"] == {"exact": 1, "folded": 2}
    assert rm_report["rm"]["best_position_share"] == {"2": {"completion_0": 1.0}, "3": {"completion_1": 1.0}}
    assert (rm_report["rm"]["ties"], rm_report["rm"]["pairs"]) == (1, 5)
    assert rm_report["texts"]["prompt"]["serialised"] == 1
    assert rm_report["texts"]["completion"]["chars"] == {"min": 1, "p50": 3, "p90": 3, "p99": 3, "max": 3, "mean": 2.3}
    assert ppo_report["texts"]["prompt"]["low_hangul_share"] == 0.5
    assert report["prompt_overlap"] == {"ppo & rm": 1}


def test_token_lengths_with_a_local_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "안녕": 1, "하세요": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    ppo = write_lines(tmp_path / "ppo.jsonl", [{"prompt": "안녕 하세요"}, {"prompt": "안녕"}, {"prompt": "안녕 하세요 안녕"}])
    report = collect_stats([ppo], tokenizer=str(tmp_path / "tok"))
    assert report["sources"][0]["texts"]["prompt"]["tokens"] == {"min": 1, "p50": 2, "p90": 3, "p99": 3, "max": 3, "mean": 2.0}


def test_unloadable_tokenizer_is_a_usage_error(tmp_path):
    import pytest

    from kochat_data.errors import UsageError

    ppo = write_lines(tmp_path / "ppo.jsonl", [{"prompt": "안녕"}])
    with pytest.raises(UsageError, match="--tokenizer"):
        collect_stats([ppo], tokenizer=str(tmp_path / "no-such-tokenizer"))
