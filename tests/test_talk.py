"""`kochat generate`, `chat`, `score` and `eval decoding`, and the saved stages read by plain transformers."""

import io
import json
import subprocess
import sys

import datasets
import pytest
import torch
from transformers import GenerationConfig

import kochat_train.rollout
from conftest import REPO, TINY
from kochat_train.template import prompt_text
from kochat.talk import Dialogue
from kochat_data.validate import validate_file
from kochat_eval.decoding import NOTEBOOK_DECODINGS, DecodingEvalConfig, compare_decodings
from kochat_train.rewards import RewardScorer
from kochat_train.decoding_flags import DECODING_OPTIONS, parse_decoding
from kochat_train.rm import PairCollator, ScalarRewardModel, tokenize_pairs
from kochat_train.sources import load_reward_model, load_tokenizer

PROMPTS = ["안녕하세요", "오늘 저녁 메뉴로 뭐가 좋을까요? 추천해 주세요", "주말에 뭐 해?"]


def responses(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_batched_generation_equals_one_prompt_at_a_time_under_greedy(run_cli, tiny_base):
    code, together, err = run_cli("generate", "--model", tiny_base, "--json", "--max-new-tokens", 8, *PROMPTS)
    assert code == 0, err
    alone = [responses(run_cli("generate", "--model", tiny_base, "--json", "--max-new-tokens", 8, prompt)[1])[0] for prompt in PROMPTS]
    assert responses(together) == alone and [row["prompt"] for row in alone] == PROMPTS
    assert all(set(row) == {"prompt", "response", "tokens", "eos"} for row in alone)


def test_every_decoding_flag_reaches_generate(run_cli, tiny_base, monkeypatch, tmp_path):
    seen = {}
    real = kochat_train.rollout.generate

    def spy(model, tokenizer, prompts, max_length, decoding, template=True, streamer=None):
        seen.update(decoding=decoding, template=template, prompts=prompts, max_length=max_length)
        return real(model, tokenizer, prompts, max_length, decoding, template, streamer)

    monkeypatch.setattr(kochat_train.rollout, "generate", spy)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "파일 질문"}\n', encoding="utf-8")
    flags = {"max_new_tokens": 5, "temperature": 0.7, "top_k": 7, "top_p": 0.8, "num_beams": 3, "no_repeat_ngram_size": 2,
             "repetition_penalty": 1.3, "num_return_sequences": 2}
    arguments = [item for name, value in flags.items() for item in (f"--{name.replace('_', '-')}", value)]
    code, out, err = run_cli("generate", "--model", tiny_base, "--raw", "--do-sample", "--json", "--max-length", 40, *arguments,
                             "--file", prompts, "질문")
    assert code == 0, err
    decoding: GenerationConfig = seen["decoding"]
    assert {name: getattr(decoding, name) for name in flags} == flags and decoding.do_sample is True
    assert set(flags) | {"do_sample"} == set(DECODING_OPTIONS)  # the test covers every flag there is
    assert seen["template"] is False and seen["prompts"] == ["질문", "파일 질문"] and seen["max_length"] == 40
    assert [(row["prompt"], row["sequence"]) for row in responses(out)] == [("질문", 0), ("질문", 1), ("파일 질문", 0), ("파일 질문", 1)]


def test_decoding_problems_are_refused_together(run_cli, tiny_base):
    code, _, err = run_cli("generate", "--model", tiny_base, "--top-p", "1.5", "--temperature", "0", "--num-return-sequences", 2, "질문")
    assert code == 2 and "top_p must be in (0, 1]" in err and "temperature must be" in err and "num_return_sequences 2 needs" in err
    assert run_cli("generate", "--model", tiny_base)[0] == 2
    assert parse_decoding("b4=num_beams=4,no-repeat-ngram-size=2,do_sample=true") == ("b4", {"num_beams": 4, "no_repeat_ngram_size": 2, "do_sample": True})
    with pytest.raises(Exception, match="expects int"):
        parse_decoding("b=num_beams=four")


def test_chat_prompts_follow_the_conversation_file_and_reset(tmp_path):
    conversation = tmp_path / "conversation.txt"
    conversation.write_text("<<start conversation>>\n<사람>: 안녕?\n<챗봇>: 안녕하세요!\n<사람>: 날씨 어때?\n<챗봇>: 맑아요.\n", encoding="utf-8")
    first, second = (record["prompt"] for record in validate_file(conversation).records)
    dialogue = Dialogue()  # messages, whose text (what the kochatgpt template shows) is the conversation file's prompt
    assert prompt_text(dialogue.prompt("안녕?")) == first
    dialogue.add("안녕?", "안녕하세요!")
    assert dialogue.prompt("날씨 어때?")[-1] == {"role": "user", "content": "날씨 어때?"} and len(dialogue.prompt("날씨 어때?")) == 3
    assert prompt_text(dialogue.prompt("날씨 어때?")) == second == "<사람>: 안녕?\n<챗봇>: 안녕하세요!\n<사람>: 날씨 어때?"
    dialogue.reset()
    assert dialogue.prompt("날씨 어때?") == [{"role": "user", "content": "날씨 어때?"}]


def test_chat_keeps_and_resets_the_dialogue_it_sends(run_cli, tiny_base, monkeypatch):
    sent = []
    real = kochat_train.rollout.generate

    def spy(model, tokenizer, prompts, max_length, decoding, template=True, streamer=None):
        sent.append(prompt_text(prompts[0]))  # the dialogue's text: what the kochatgpt template shows
        return real(model, tokenizer, prompts, max_length, decoding, template, streamer)

    monkeypatch.setattr(kochat_train.rollout, "generate", spy)
    monkeypatch.setattr(sys, "stdin", io.StringIO("안녕?\n날씨 어때?\n/reset\n고마워\n/what\n"))  # ends with EOF, as Ctrl-D
    code, out, err = run_cli("chat", "--model", tiny_base, "--max-new-tokens", 6)
    assert code == 0, err
    replies = [line.removeprefix("<챗봇> ") for line in out.splitlines()]
    assert len(replies) == 3 and sent[0] == "안녕?" and sent[2] == "고마워"
    assert sent[1] == f"<사람>: 안녕?\n<챗봇>: {replies[0]}\n<사람>: 날씨 어때?"
    assert "(dialogue cleared)" in err and "unknown command /what" in err


def test_chat_end_to_end_through_piped_stdin(tiny_base):
    result = subprocess.run([sys.executable, "-m", "kochat", "chat", "--model", str(tiny_base), "--max-new-tokens", "5", "--do-sample"],
                            input="안녕?\n뭐 해?\n/exit\n무시됨\n", capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    # Two answers, the input after /exit unread; an answer may hold a line break of its own.
    assert result.stdout.startswith("<챗봇> ") and result.stdout.count("<챗봇> ") == 2
    assert "Traceback" not in result.stderr


def test_score_equals_the_reward_of_training(run_cli, tiny_rm, sample_data, tmp_path):
    pairs = datasets.load_from_disk(str(sample_data / "rm"))["eval"]
    tokenizer = load_tokenizer(tiny_rm)
    reward_model = ScalarRewardModel(load_reward_model(tiny_rm, tokenizer)).eval()
    batch = PairCollator(tokenizer)(list(tokenize_pairs(pairs, tokenizer, TINY["max_length"])))
    with torch.no_grad():
        chosen = reward_model(batch["input_ids"], batch["attention_mask"]).chunk(2)[0]
    scored = RewardScorer(tiny_rm).score(pairs["prompt"], pairs["chosen"], batch_size=5)
    torch.testing.assert_close(torch.tensor(scored), chosen, rtol=0, atol=1e-5)

    file = tmp_path / "pairs.jsonl"
    file.write_text("".join(json.dumps({"prompt": p, "response": c}, ensure_ascii=False) + "\n" for p, c in zip(pairs["prompt"][:2], pairs["chosen"][:2])))
    code, out, err = run_cli("score", "--model", tiny_rm, "--json", "--prompt", pairs["prompt"][0], pairs["chosen"][0], "--file", file)
    assert code == 0, err
    rewards = [row["reward"] for row in responses(out)]
    assert rewards == pytest.approx([scored[0], scored[0], scored[1]], abs=1e-5)
    file.write_text('{"prompt": "질문"}\n', encoding="utf-8")
    code, _, err = run_cli("score", "--model", tiny_rm, "--file", file)
    assert code == 1 and "pairs.jsonl:1: record 1: expected an object with text fields 'prompt' and 'response'" in err


def test_eval_decoding_has_a_row_per_config_with_every_column(run_cli, tiny_base, tiny_rm, sample_data, tmp_path):
    config = DecodingEvalConfig(model=tiny_base, reward_model=tiny_rm, data=sample_data, max_prompts=3, max_new_tokens=6,
                                decodings={name: NOTEBOOK_DECODINGS[name] for name in ("greedy", "beam10-norepeat2", "sampling")})
    report, generations = compare_decodings(config)
    columns = {"proxy_score", "proxy_score_ci_low", "proxy_score_ci_high", "length_mean", "length_median", "eos_rate", "non_hangul_share",
               "distinct_1", "distinct_2", "seq_rep_4", "rep_w16", "loop_share"}
    assert [row["stage"] for row in report["stages"]] == ["greedy", "beam10-norepeat2", "sampling"]
    assert all(columns <= set(row) for row in report["stages"])
    assert report["decodings"]["beam10-norepeat2"]["num_beams"] == 10 and len(generations) == 9
    again, _ = compare_decodings(config)
    assert again == report  # same prompts, seed and configs: the same table

    code, out, err = run_cli("eval", "decoding", "--model", tiny_base, "--reward-model", tiny_rm, "--data", sample_data, "--max-prompts", 2,
                             "--max-new-tokens", 4, "--decoding", "b2=num_beams=2", "--decoding", "t07=do_sample=true,temperature=0.7",
                             "--markdown", "--out", tmp_path / "decoding", "--relevance-encoder", "none")
    assert code == 0, err
    assert out.startswith("| stage | proxy | proxy 95% CI | length |") and "| b2 |" in out and "| t07 |" in out
    assert {p.name for p in (tmp_path / "decoding").iterdir()} == {"report.json", "table.md", "report.csv", "generations.jsonl", "report.html"}
    code, _, err = run_cli("eval", "decoding", "--model", tiny_base, "--reward-model", tiny_rm, "--data", sample_data,
                           "--decoding", "bad=num_beams=0")
    assert code == 2 and "--decoding bad: num_beams must be ≥ 1" in err


PLAIN_TRANSFORMERS = """
import sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

sft, rm = sys.argv[1], sys.argv[2]
generator = pipeline("text-generation", model=sft)
prompt = "### Instruction(명령어):\\n오늘 날씨 어때?\\n\\n### Response(응답):"
out = generator(prompt, num_beams=4, repetition_penalty=2.0, no_repeat_ngram_size=4, max_new_tokens=16, do_sample=True, top_k=50,
                return_full_text=False)
assert isinstance(out[0]["generated_text"], str)
tokenizer = AutoTokenizer.from_pretrained(rm)
model = AutoModelForSequenceClassification.from_pretrained(rm).eval()
ids = tokenizer(prompt + "맑아요.", return_tensors="pt")["input_ids"]
ids = torch.cat([ids, torch.tensor([[tokenizer.eos_token_id]])], dim=1)
with torch.no_grad():
    reward = model(input_ids=ids).logits[0, 0].item()
assert not any(name.startswith("kochat") for name in sys.modules)
print(reward)
"""


def test_saved_stages_load_with_plain_transformers(tiny_base, tiny_rm, sample_data, tmp_path):
    from kochat_train.sft import SFTConfig, train_sft

    sft = train_sft(SFTConfig(data=sample_data, out=tmp_path / "sft", model=str(tiny_base), max_steps=1, **TINY)).out
    result = subprocess.run([sys.executable, "-c", PLAIN_TRANSFORMERS, str(sft), str(tiny_rm)], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    scorer = RewardScorer(tiny_rm)
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(scorer.score(["오늘 날씨 어때?"], ["맑아요."])[0], abs=1e-4)
