"""The KoChatGPT prompt template and how a (prompt, response) becomes token ids, shared by every stage."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

PROMPT_TEMPLATE = "### Instruction(명령어):\n{prompt}\n\n### Response(응답):"
IGNORE_INDEX = -100  # the label value cross-entropy skips in transformers


def render_prompt(prompt: str) -> str:
    return PROMPT_TEMPLATE.format(prompt=prompt)


def join_prompt_response(prompt_ids: list[int], response_ids: list[int], max_length: int) -> tuple[list[int], int]:
    """`prompt + response` cut to `max_length`; returns the ids and the index where the response starts.

    The response keeps at least half the budget (it carries the loss and the reward); the
    prompt loses its beginning, not its end, so the `### Response(응답):` marker survives.
    """
    response_ids = response_ids[: max(max_length - len(prompt_ids), max_length // 2)]
    prompt_ids = prompt_ids[max(0, len(prompt_ids) - (max_length - len(response_ids))) :]
    return prompt_ids + response_ids, len(prompt_ids)


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str], max_length: int
) -> list[tuple[list[int], int]]:
    """Token ids of `template(prompt) + response + EOS` per example, and where each response starts.

    Prompt and response are tokenised separately so that the ids match what generation
    produces after the prompt; the EOS is the token id, never its text.
    """
    prompt_ids = tokenizer([render_prompt(p) for p in prompts], add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id]
    return [join_prompt_response(p, r + eos, max_length) for p, r in zip(prompt_ids, response_ids, strict=True)]
