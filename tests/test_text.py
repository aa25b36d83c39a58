import polars as pl

from kochat_data.text import fold, hangul_ratio, looks_serialised, normalize, prompt_id


def test_normalize_composes_hangul_and_keeps_compatibility_characters():
    decomposed = "\u1112\u1161\u11ab"  # 한 as conjoining jamo
    assert normalize(decomposed) == "한"
    assert normalize("ＡＢ１") == "ＡＢ１"  # NFKC would turn these into AB1
    assert normalize("a\r\nb") == "a\nb"


def test_fold_collapses_whitespace_and_prompt_id_follows_it():
    assert fold("  안녕 \n\t하세요  ") == "안녕 하세요"
    assert prompt_id("안녕  하세요") == prompt_id(" 안녕 하세요\n")
    assert prompt_id("안녕하세요") != prompt_id("안녕 하세요")
    assert len(prompt_id("x")) == 16


def test_hangul_ratio_and_serialisation_marks():
    frame = pl.DataFrame({"text": ["한국 ab", "abc", "123", "", "x\", 'completion': y"]})
    result = frame.select(ratio=hangul_ratio(pl.col("text")), leaked=looks_serialised(pl.col("text")))
    assert result.get_column("ratio").to_list() == [0.5, 0.0, 0.0, 0.0, 0.0]
    assert result.get_column("leaked").to_list() == [False, False, False, False, True]
