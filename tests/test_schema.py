import pytest

from kochat_data.schema import Kind, check_record, detect_kind
from kochat_data.validate import validate_file
from tests.conftest import write_array


@pytest.mark.parametrize(
    ("record", "kind"),
    [({"prompt": "a", "completion": "b"}, Kind.SFT), ({"prompt": "a", "completion_0": "b"}, Kind.RM),
     ({"prompt": "a"}, Kind.PPO), ({"q": "a"}, None), ("text", None)],
)
def test_kind_is_detected_from_fields(record, kind):
    assert detect_kind(record) is kind


@pytest.mark.parametrize(
    ("record", "kind", "expected"),
    [
        ({"completion": "b"}, Kind.SFT, [("prompt", "missing")]),
        ({"prompt": 3, "completion": " "}, Kind.SFT,
         [("prompt", "expected text, got int 3"), ("completion", "expected non-empty text, got blank string")]),
        ({"prompt": "a", "completion_0": "x", "completion_1": "y", "ranking": [0, 1, 2]}, Kind.RM,
         [("ranking", "expected 2 ints, got 3")]),
        ({"prompt": "a", "completion_0": "x", "completion_1": "y", "ranking": [0, "1"]}, Kind.RM,
         [("ranking", "expected 2 ints, got string '1' at position 1")]),
        ({"prompt": "a", "completion_0": "x", "completion_1": "y", "ranking": [0, True]}, Kind.RM,
         [("ranking", "expected 2 ints, got boolean true at position 1")]),
        ({"prompt": "a", "completion_0": "x", "completion_1": "y", "ranking": [-1, 0]}, Kind.RM,
         [("ranking", "expected ranks ≥ 0, got -1 at position 0")]),
        ({"prompt": "a", "completion_0": "x", "ranking": [0]}, Kind.RM,
         [("completion_1", "missing (RM needs completion_0 … completion_{k-1}, k ≥ 2; has completion_0)"),
          ("ranking", "expected 2 ints, got 1")]),
        ({"prompt": "a", "completion_0": "x", "completion_2": "z", "ranking": [0, 1, 2]}, Kind.RM,
         [("completion_1", "missing (RM needs completion_0 … completion_{k-1}, k ≥ 2; has completion_0, completion_2)")]),
        ([1, 2], Kind.PPO, [(None, "expected a JSON object, got list of 2")]),
    ],
)
def test_every_problem_of_a_record_is_reported(record, kind, expected):
    clean, problems = check_record(record, kind)
    assert clean is None
    assert problems == expected


def test_valid_records_are_normalised_and_extra_fields_carried():
    clean, problems = check_record(
        {"prompt": "질문", "completion_0": "a", "completion_1": "b", "ranking": [1, 0], "tokens": 7}, Kind.RM
    )
    assert problems == []
    assert clean == {"prompt": "질문", "prompt_messages": None, "completions": ["a", "b"], "ranking": [1, 0], "extra": {"tokens": 7}}


def test_problems_are_located_lines_and_rejects_keep_the_raw_record(tmp_path):
    path = write_array(tmp_path / "rm.json", [
        {"prompt": "a", "completion_0": "x", "completion_1": "y", "ranking": [0, 1]},
        {"prompt": "b", "completion_0": "x", "completion_1": "y", "completion_2": "z", "ranking": [0, 1]},
    ])
    validated = validate_file(path, Kind.RM)
    assert [str(p) for p in validated.problems] == [f"{path}:11: record 2: field 'ranking': expected 3 ints, got 2"]
    assert validated.rejects[0]["record"]["prompt"] == "b" and validated.rejects[0]["index"] == 2
    assert validated.summary() == f"{path}: 1 of 2 rm records invalid ('ranking' ×1)"
