"""What other model families bring, checked on tiny random models: dropout inside their attention functions, and the
chat template a saved stage carries."""

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from kochat_data.reading import render_dialogue
from kochat_train.stage_models import disable_dropout
from kochat_train.template import KOCHATGPT_CHAT_TEMPLATE, render_prompt


def test_attention_dropout_of_llama_shaped_models_is_switched_off():
    """Llama, Qwen2, GPT-NeoX, Phi3 and Gemma2 drop attention probabilities through a float rate, not a module:
    with it left on, two passes over the same tokens in training mode give different log-probs."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, attention_dropout=0.5)).train()
    ids = torch.randint(0, 64, (2, 12))
    assert not torch.equal(model(ids).logits, model(ids).logits)  # the checkpoint's dropout is live
    disable_dropout(model)
    assert torch.equal(model(ids).logits, model(ids).logits)


def test_a_saved_stage_carries_the_template_it_was_trained_on(tiny_base, tiny_encoder_rm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    assert tokenizer.chat_template == KOCHATGPT_CHAT_TEMPLATE
    question = [{"role": "system", "content": "친절하게"}, {"role": "user", "content": "오늘 날씨 어때?"}]
    assert tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=False) == render_prompt("오늘 날씨 어때?")
    dialogue = [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "반가워요"}, {"role": "user", "content": "뭐 해?"}]
    expected = render_prompt(render_dialogue([("사람", "안녕"), ("챗봇", "반가워요"), ("사람", "뭐 해?")]))
    assert tokenizer.apply_chat_template(dialogue, add_generation_prompt=True, tokenize=False) == expected
    answered = tokenizer.apply_chat_template([*question, {"role": "assistant", "content": "맑아요"}], tokenize=False)
    assert answered == render_prompt("오늘 날씨 어때?") + "맑아요" + tokenizer.eos_token
    assert AutoTokenizer.from_pretrained(tiny_encoder_rm).chat_template != KOCHATGPT_CHAT_TEMPLATE  # it reads a text pair


def test_every_end_id_of_a_generation_config_ends_an_answer(tiny_base, tmp_path):
    """An instruct model's generation_config names end-of-turn beside EOS (`[2, 3]`): both must end an answer,
    in sampling, in the response mask and in `ended`. The end-of-turn stand-in is the token the tiny base
    samples most; with the same seed, answers are those of a run without it, cut at its first occurrence."""
    import shutil

    from transformers import GenerationConfig, set_seed

    from kochat_train.rollout import decoding_config, generate
    from kochat_train.sources import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(tiny_base)
    decoding = decoding_config(tokenizer, max_new_tokens=16, num_return_sequences=4)
    prompts = ["안녕", "오늘 저녁 메뉴로 뭐가 좋을까요?"]
    set_seed(0)
    plain = generate(load_causal_lm(tiny_base, tokenizer).eval(), tokenizer, prompts, 64, decoding)
    counts = torch.bincount(plain.response_ids[plain.response_mask == 1], minlength=len(tokenizer))
    counts[tokenizer.eos_token_id] = 0
    turn_end = int(counts.argmax())
    instruct = tmp_path / "instruct"
    shutil.copytree(tiny_base, instruct, ignore=shutil.ignore_patterns("checkpoints"))
    GenerationConfig(eos_token_id=[tokenizer.eos_token_id, turn_end]).save_pretrained(instruct)
    model = load_causal_lm(instruct, tokenizer).eval()
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, turn_end]
    set_seed(0)
    cut = generate(model, tokenizer, prompts, 64, decoding)
    for row in range(len(plain.response_ids)):
        ids = plain.response_ids[row][plain.response_mask[row] == 1].tolist()
        stop = ids.index(turn_end) + 1 if turn_end in ids else len(ids)
        assert cut.response_ids[row][cut.response_mask[row] == 1].tolist() == ids[:stop]
        assert bool(cut.ended[row]) == (turn_end in ids or bool(plain.ended[row]))
    assert (~plain.ended & cut.ended).any()  # some answer ended only at the end-of-turn id


def test_a_reward_model_with_an_eos_of_its_own_reads_answers_ended_by_it(tiny_rm, tmp_path):
    """Rewards are read from text: an RM whose EOS differs from the policy's (same vocabulary) gets each answer
    re-encoded and ended with its own EOS, the token its reward was trained at."""
    import shutil

    from kochat_train.rewards import RewardScorer
    from kochat_train.rm import ScalarRewardModel
    from kochat_train.sources import load_reward_model, load_tokenizer
    from kochat_train.template import encode_examples

    other = tmp_path / "rm"
    shutil.copytree(tiny_rm, other, ignore=shutil.ignore_patterns("checkpoints"))
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.eos_token = tokenizer.unk_token
    tokenizer.save_pretrained(other)
    prompts, responses = ["안녕"], ["반가워요."]
    own = load_tokenizer(other)
    assert own.eos_token_id != load_tokenizer(tiny_rm).eos_token_id and own.get_vocab() == load_tokenizer(tiny_rm).get_vocab()
    ids, _ = encode_examples(own, prompts, responses, 64)[0]
    assert ids[-1] == own.eos_token_id
    with torch.no_grad():
        expected = ScalarRewardModel(load_reward_model(other, own).eval())(torch.tensor([ids]), torch.ones(1, len(ids))).item()
    assert RewardScorer(other, "cpu").score(prompts, responses) == [pytest.approx(expected, abs=1e-6)]
