"""Chat-template models: --template kochatgpt|chat|raw, recorded and inherited; SentencePiece tokenisation; a tiny Llama
with its own chat template through SFT → RM → DPO → PPO → GRPO → eval stages on the bring-your-own fixtures."""

import json

import pytest
from transformers import AutoTokenizer

from conftest import CHATML_TEMPLATE, TINY
from kochat_train.sources import load_tokenizer, trust_remote_code
from kochat_train.template import KOCHATGPT_CHAT_TEMPLATE, encode_examples, render_prompt

CHAT = {**TINY, "max_steps": 2, "learning_rate": 1e-3, "template": "chat"}
SYSTEM = [{"role": "system", "content": "친절하게"}]


def test_answers_are_tokenised_as_they_follow_the_prompt(tiny_llama):
    """A SentencePiece tokenizer writes a word start as `▁`: the answer alone would begin `▁쓰`, but after the prompt it is `쓰`."""
    for template in ("kochatgpt", "chat"):
        tokenizer = load_tokenizer(tiny_llama, template)
        prompt = [*SYSTEM, {"role": "user", "content": "하루 일과를 알려줘"}]
        (ids, start), = encode_examples(tokenizer, [prompt], ["쓰레기는 분리해서 버리세요."], 128)
        whole = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": "쓰레기는 분리해서 버리세요."}], tokenize=False)
        special = template != "chat"
        assert ids == tokenizer(whole.rstrip(), add_special_tokens=special)["input_ids"]
        assert ids[:start] == tokenizer(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False),
                                        add_special_tokens=special)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(ids[start]) == "쓰" and ids[-1] == tokenizer.eos_token_id
        assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id  # the BOS, once in either template


def test_templates_render_and_raw_is_the_prompt_alone(tiny_llama):
    question = [{"role": "user", "content": "오늘 날씨 어때?"}]
    kochatgpt, chat, raw = (load_tokenizer(tiny_llama, name) for name in ("kochatgpt", "chat", "raw"))
    assert kochatgpt.chat_template == KOCHATGPT_CHAT_TEMPLATE and chat.chat_template == CHATML_TEMPLATE
    assert kochatgpt.apply_chat_template(question, add_generation_prompt=True, tokenize=False) == render_prompt("오늘 날씨 어때?")
    assert raw.apply_chat_template(question, add_generation_prompt=True, tokenize=False) == "오늘 날씨 어때?"
    assert chat.apply_chat_template(question, add_generation_prompt=True, tokenize=False).endswith("<|im_start|>assistant\n")


def test_a_template_without_a_chat_template_and_a_mismatch_are_refused(run_cli, tiny_base, kogpt2_shaped, sample_data, tmp_path):
    code, _, err = run_cli("train", "sft", "--data", sample_data, "--model", kogpt2_shaped, "--template", "chat", "--out", tmp_path / "a")
    assert code == 2 and "--template chat, but its tokenizer has no chat template" in err and not (tmp_path / "a").exists()
    code, _, err = run_cli("train", "sft", "--data", sample_data, "--model", tiny_base, "--template", "raw", "--out", tmp_path / "b")
    assert code == 2 and "trained with --template kochatgpt, not raw" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("generate", "--model", tiny_base, "--template", "raw", "--max-new-tokens", 2, "질문")
    assert code == 2 and "--force-template" in err
    code, out, err = run_cli("generate", "--model", tiny_base, "--template", "raw", "--force-template", "--max-new-tokens", 2, "질문")
    assert code == 0, err


def test_multi_turn_sft_learns_the_last_assistant_turn_only(tiny_llama):
    from kochat_train.sft import sft_labels

    tokenizer = load_tokenizer(tiny_llama, "chat")
    prompt = [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "반가워요"}, {"role": "user", "content": "뭐 해?"}]
    (ids, start), = encode_examples(tokenizer, [prompt], ["책 읽어요"], 128)
    learned = [token for token, label in zip(ids, sft_labels(ids, start)) if label != -100]
    assert tokenizer.decode(learned) == "책 읽어요<|im_end|>"  # the earlier answer is read, never learned here


def test_a_system_prompt_is_kept_in_the_saved_template(tiny_llama, byo_data, tmp_path):
    from kochat_train.sft import SFTConfig, train_sft

    out = tmp_path / "sft"
    train_sft(SFTConfig(data=byo_data, out=out, model=str(tiny_llama), system_prompt="반말로 답해", **{**CHAT, "max_steps": 1}))
    saved = AutoTokenizer.from_pretrained(out)
    rendered = saved.apply_chat_template([{"role": "user", "content": "질문"}], add_generation_prompt=True, tokenize=False)
    assert rendered.startswith("<s><|im_start|>system\n반말로 답해<|im_end|>")
    own = saved.apply_chat_template([*SYSTEM, {"role": "user", "content": "질문"}], add_generation_prompt=True, tokenize=False)
    assert "반말로" not in own and "친절하게" in own
    assert json.loads((out / "kochat_config.json").read_text(encoding="utf-8"))["template"] == "chat"


@pytest.fixture(scope="module")
def chat_stages(tiny_llama, byo_data, tmp_path_factory):
    from kochat_train.dpo import DPOConfig, train_dpo
    from kochat_train.grpo import GRPOConfig, train_grpo
    from kochat_train.ppo import PPOConfig, train_ppo
    from kochat_train.rm import RewardConfig, train_rm
    from kochat_train.sft import SFTConfig, train_sft

    root = tmp_path_factory.mktemp("chat_stages")
    online = {**CHAT, "max_steps": 1, "batch_size": 2, "max_new_tokens": 8}
    online.pop("template")  # inherited from the SFT directory
    sft = train_sft(SFTConfig(data=byo_data, out=root / "sft", model=str(tiny_llama), **CHAT)).out
    rm = train_rm(RewardConfig(data=byo_data, out=root / "rm", model=str(sft), **{**CHAT, "template": None})).out
    dpo = train_dpo(DPOConfig(data=byo_data, out=root / "dpo", model=str(sft), **{**CHAT, "template": None})).out
    ppo = train_ppo(PPOConfig(data=byo_data, out=root / "ppo", sft=str(sft), rm=str(rm), **online)).out
    grpo = train_grpo(GRPOConfig(data=byo_data, out=root / "grpo", sft=str(sft), reward=[f"rm={rm}"], group_size=2, **online)).out
    return {"sft": sft, "rm": rm, "dpo": dpo, "ppo": ppo, "grpo": grpo}


def test_a_chat_template_model_runs_every_stage_and_each_inherits_the_template(chat_stages, byo_data, run_cli, tmp_path):
    for name, directory in chat_stages.items():
        assert json.loads((directory / "kochat_config.json").read_text(encoding="utf-8"))["template"] == "chat", name
        assert AutoTokenizer.from_pretrained(directory).chat_template == CHATML_TEMPLATE, name
    code, out, err = run_cli("eval", "stages", *[arg for name in ("sft", "dpo", "ppo", "grpo") for arg in ("--stage", f"{name}={chat_stages[name]}")],
                             "--reward-model", chat_stages["rm"], "--data", byo_data, "--max-prompts", 4, "--max-new-tokens", 6,
                             "--relevance-encoder", "none", "--out", tmp_path / "eval", "--json")
    assert code == 0, err
    generations = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(generations) == 16 and all(isinstance(row["prompt"], str) for row in generations)
    code, out, err = run_cli("score", "--model", chat_stages["rm"], "--prompt", "질문", "답", "--json")
    assert code == 0 and "reward" in json.loads(out.splitlines()[0])
    code, _, err = run_cli("generate", "--model", chat_stages["ppo"], "--template", "kochatgpt", "질문")
    assert code == 2 and "trained with --template chat" in err


def test_a_model_with_its_own_code_loads_only_when_trusted(run_cli, tiny_base, tmp_path):
    """A checkpoint whose config names code of its own (`auto_map`): refused in one line without --trust-remote-code
    (transformers is never left to ask y/N), loaded with it."""
    import shutil

    custom = tmp_path / "custom"
    shutil.copytree(tiny_base, custom, ignore=shutil.ignore_patterns("checkpoints"))
    (custom / "configuration_custom.py").write_text(
        "from transformers import GPT2Config\n\n\nclass CustomConfig(GPT2Config):\n    model_type = 'custom_gpt2'\n", encoding="utf-8")
    (custom / "modeling_custom.py").write_text(
        "from transformers import GPT2LMHeadModel\n\nfrom .configuration_custom import CustomConfig\n\n\n"
        "class CustomModel(GPT2LMHeadModel):\n    config_class = CustomConfig\n", encoding="utf-8")
    config = json.loads((custom / "config.json").read_text(encoding="utf-8"))
    config.update(model_type="custom_gpt2", architectures=["CustomModel"],
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig", "AutoModelForCausalLM": "modeling_custom.CustomModel"})
    (custom / "config.json").write_text(json.dumps(config), encoding="utf-8")
    code, _, err = run_cli("generate", "--model", custom, "--max-new-tokens", 2, "질문")
    assert code == 2 and "runs only with --trust-remote-code" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("generate", "--model", custom, "--max-new-tokens", 2, "--trust-remote-code", "질문")
    trust_remote_code(False)  # the setting is the process's: leave it as later tests expect
    assert code == 0, err
