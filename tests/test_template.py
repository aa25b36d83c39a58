import datasets
from transformers import DataCollatorForSeq2Seq

from kochat_train.sft import IGNORE_INDEX, sft_labels, tokenize_sft
from kochat_train.sources import load_tokenizer
from kochat_train.template import PROMPT_TEMPLATE, encode_examples, join_prompt_response, render_prompt


def test_template_is_the_kochatgpt_one():
    assert render_prompt("불고기 만드는 법") == "### Instruction(명령어):\n불고기 만드는 법\n\n### Response(응답):"
    assert render_prompt("{x}") == PROMPT_TEMPLATE.replace("{prompt}", "{x}")


def test_join_keeps_everything_that_fits():
    assert join_prompt_response([1, 2, 3], [7, 8, 9], max_length=10) == ([1, 2, 3, 7, 8, 9], 3)


def test_join_cuts_the_response_end_and_the_prompt_start():
    # budget 6: response keeps max(6 − 5, 3) = 3 tokens; the prompt keeps its last 3
    assert join_prompt_response([1, 2, 3, 4, 5], [6, 7, 8, 9], max_length=6) == ([3, 4, 5, 6, 7, 8], 3)


def test_sft_labels_ignore_the_prompt_only():
    assert sft_labels([5, 6, 7, 8], response_start=2) == [IGNORE_INDEX, IGNORE_INDEX, 7, 8]


def test_encoded_example_ends_with_the_eos_id(tiny_base):
    tokenizer = load_tokenizer(tiny_base)
    [(ids, start)] = encode_examples(tokenizer, ["질문?"], ["답 하나."], max_length=64)
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[:start]) == render_prompt("질문?")
    assert tokenizer.decode(ids[start:-1]) == "답 하나."


def test_batch_masks_prompt_and_padding_and_keeps_eos(tiny_base):
    tokenizer = load_tokenizer(tiny_base)
    rows = datasets.Dataset.from_dict({"prompt": ["짧은 질문", "조금 더 긴 질문입니다 정말로"], "completion": ["네.", "아주 긴 대답을 여기에 적습니다."]})
    features = tokenize_sft(rows, tokenizer, max_length=64)
    batch = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)([features[0], features[1]])
    for row in range(2):
        ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
        length = int(mask.sum())
        [(expected, start)] = encode_examples(tokenizer, [rows[row]["prompt"]], [rows[row]["completion"]], 64)
        assert ids[:length].tolist() == expected
        assert (labels[:start] == IGNORE_INDEX).all()  # prompt
        assert (labels[length:] == IGNORE_INDEX).all()  # padding
        assert labels[start:length].tolist() == expected[start:]  # response + EOS, nothing masked
        assert labels[length - 1] == tokenizer.eos_token_id and mask[length - 1] == 1
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # row 0 really was padded
