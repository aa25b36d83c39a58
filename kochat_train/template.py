"""The KoChatGPT prompt template and how a (prompt, response) becomes token ids, shared by every stage;
and how an encoder (a relevance referee, an encoder reward model) reads a question and an answer."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from kochat_data.errors import UsageError
from kochat_train.e5_export import E5_PREFIXES, ENCODER_FILE

PROMPT_TEMPLATE = "### Instruction(명령어):\n{prompt}\n\n### Response(응답):"
IGNORE_INDEX = -100  # the label value cross-entropy skips in transformers


def render_prompt(prompt: str) -> str:
    return PROMPT_TEMPLATE.format(prompt=prompt)


# The same prompt as a chat template, saved with every stage's tokenizer (instead of whatever template the base
# model came with), so `apply_chat_template` in plain transformers gives what the model was trained on: one
# question as it is, a longer dialogue as `<사람>: …` / `<챗봇>: …` lines (kochat_data's render_dialogue); a
# closing assistant message is the answer, followed by EOS. System messages are not part of the template.
KOCHATGPT_CHAT_TEMPLATE = (
    "{%- set turns = messages | rejectattr('role', 'equalto', 'system') | list -%}"
    "{%- set answered = turns | length > 1 and turns[-1]['role'] == 'assistant' -%}"
    "{%- set asked = turns[:-1] if answered else turns -%}"
    "{{ '### Instruction(명령어):\\n' }}"
    "{%- if asked | length == 1 -%}{{ asked[0]['content'] }}"
    "{%- else -%}{%- for message in asked -%}"
    "{{ '<사람>: ' if message['role'] == 'user' else '<챗봇>: ' }}{{ message['content'] }}{{ '' if loop.last else '\\n' }}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '\\n\\n### Response(응답):' }}"
    "{%- if answered -%}{{ turns[-1]['content'] + eos_token }}{%- endif -%}"
)


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


@dataclass(frozen=True)
class EncoderReading:
    """How an encoder reads a question and an answer: what it is, and the text put before each."""

    encoder: str
    query_prefix: str = ""
    passage_prefix: str = ""


def encoder_reading(source: str | Path) -> EncoderReading:
    """From the directory's kochat_encoder.json; else a name with an `e5` part reads like e5 (query:/passage:)."""
    path = Path(source) / ENCODER_FILE
    if path.is_file():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            return EncoderReading(str(record["encoder"]), str(record["query_prefix"]), str(record["passage_prefix"]))
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(f"{path}: not a kochat encoder record ({err})") from None
    name = str(source).rstrip("/")
    parts = Path(name).name.lower().replace("_", "-").split("-")
    return EncoderReading(name, **E5_PREFIXES) if "e5" in parts else EncoderReading(name)


def write_encoder_reading(out: Path, reading: EncoderReading) -> None:
    """Kept beside a model made from an encoder, so that it reads texts as it was trained to."""
    (Path(out) / ENCODER_FILE).write_text(json.dumps(asdict(reading), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def reward_inputs(tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str], max_length: int,
                  reading: EncoderReading | None = None) -> list[list[int]]:
    """The token ids a reward model scores: a decoder reads `template(prompt) + response + EOS` (its
    reward sits at the last token); an encoder (`reading` given) reads the text pair
    `<s> query </s></s> passage </s>` with its prefixes, cut longest side first."""
    if reading is None:
        return [ids for ids, _ in encode_examples(tokenizer, prompts, responses, max_length)]
    return tokenizer([reading.query_prefix + p for p in prompts], [reading.passage_prefix + r for r in responses],
                     truncation=True, max_length=max_length)["input_ids"]
