"""How a prompt becomes the text a model reads, and how a (prompt, response) becomes token ids, shared by every
stage and command; and how an encoder (a relevance referee, an encoder reward model) reads a question and an answer.

Three templates (`--template`): `kochatgpt` (`### Instruction(명령어):` … `### Response(응답):`), `chat` (the
tokenizer's own chat template) and `raw` (the prompt as it is). Each is a chat template set on the tokenizer, so
one path renders them all (`apply_chat_template`) and a saved stage carries the one it was trained with. A prompt
is a text or a conversation (a list of `{role, content}` messages, as TRL writes them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from kochat_data.errors import UsageError
from kochat_data.messages import dialogue_text
from kochat_train.config import TEMPLATES
from kochat_train.e5_export import E5_PREFIXES, ENCODER_FILE

Prompt = str | list[dict[str, str]]
DEFAULT_TEMPLATE = "kochatgpt"
CONFIG_FILE = "kochat_config.json"  # a stage's resolved config; its `template` is the one the stage trained with

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


# The prompt alone: one question as it is, a dialogue as `<사람>: …` / `<챗봇>: …` lines; an answer follows it
# directly, then EOS.
RAW_CHAT_TEMPLATE = KOCHATGPT_CHAT_TEMPLATE.replace("{{ '### Instruction(명령어):\\n' }}", "").replace(
    "{{ '\\n\\n### Response(응답):' }}", "")
_BUILT_IN = {"kochatgpt": KOCHATGPT_CHAT_TEMPLATE, "raw": RAW_CHAT_TEMPLATE}


def recorded_template(source: str | Path) -> str | None:
    """The template a kochat stage directory was trained with (stages from before `--template`: kochatgpt);
    None for anything else (a hub name, a plain `save_pretrained` directory)."""
    path = Path(source) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("template") or DEFAULT_TEMPLATE
    except (ValueError, AttributeError):
        return None


def use_template(tokenizer: PreTrainedTokenizerBase, source: str | Path, asked: str | None = None, force: bool = False,
                 system: str | None = None) -> str:
    """Set the tokenizer's chat template to the one `source` reads and return its name: `asked`, else the one
    it was trained with, else kochatgpt. Asking for another than it was trained with is refused unless
    `force`. `system` (chat only) is put before every conversation that has no system message of its own."""
    recorded = recorded_template(source)
    name = asked or recorded or DEFAULT_TEMPLATE
    if name not in TEMPLATES:
        raise UsageError(f"--template: expected one of {', '.join(TEMPLATES)}, got {name!r}")
    if asked and recorded and asked != recorded and not force:
        raise UsageError(f"{source}: trained with --template {recorded}, not {asked}; prompts in another template are text "
                         f"it never saw (pass --template {recorded}, or --force-template to use {asked} all the same)")
    if name == "chat":
        if not tokenizer.chat_template:
            raise UsageError(f"{source}: --template chat, but its tokenizer has no chat template; use --template kochatgpt or raw")
        if system:
            tokenizer.chat_template = with_default_system(tokenizer.chat_template, system)
    else:
        if system:
            raise UsageError(f"--system-prompt: only --template chat shows a system message, not {name}")
        tokenizer.chat_template = _BUILT_IN[name]
    return name


def with_default_system(template: str, system: str) -> str:
    """The template with `system` as the first message of every conversation that has none."""
    quoted = json.dumps(system, ensure_ascii=False)
    return ("{%- if messages[0]['role'] != 'system' -%}{%- set messages = [{'role': 'system', 'content': " + quoted
            + "}] + messages -%}{%- endif -%}" + template)


def template_of(tokenizer: PreTrainedTokenizerBase) -> str:
    """The name of the template a tokenizer renders with (see `use_template`)."""
    return next((name for name, text in _BUILT_IN.items() if tokenizer.chat_template == text), "chat")


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_text(prompt: Prompt) -> str:
    """The prompt as one text (for judges, referees, rules and reports): a conversation as its dialogue text."""
    return prompt if isinstance(prompt, str) else dialogue_text(prompt)


def prompts_of(texts: Sequence[str], messages: Sequence[str] | None) -> list[Prompt]:
    """The prompts of dataset rows: the `prompt_messages` conversation where a row has one, else its text
    (all texts for rows without the column)."""
    if messages is None:
        return list(texts)
    return [json.loads(conversation) if conversation else text for text, conversation in zip(texts, messages, strict=True)]


def render_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt]) -> list[str]:
    """The text each prompt is answered after: its template with the generation prompt."""
    if not prompts:
        return []
    return tokenizer.apply_chat_template([as_messages(p) for p in prompts], add_generation_prompt=True, tokenize=False)


def adds_special_tokens(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether rendered text is tokenised with the tokenizer's own specials (a BOS for Llama-style models): yes for
    kochatgpt and raw; not for a chat template, which writes its BOS itself (as `apply_chat_template` tokenises)."""
    return template_of(tokenizer) != "chat"


def join_prompt_response(prompt_ids: list[int], response_ids: list[int], max_length: int) -> tuple[list[int], int]:
    """`prompt + response` cut to `max_length`; returns the ids and the index where the response starts.

    The response keeps at least half the budget (it carries the loss and the reward); the
    prompt loses its beginning, not its end, so the `### Response(응답):` marker survives.
    """
    response_ids = response_ids[: max(max_length - len(prompt_ids), max_length // 2)]
    prompt_ids = prompt_ids[max(0, len(prompt_ids) - (max_length - len(response_ids))) :]
    return prompt_ids + response_ids, len(prompt_ids)


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], responses: Sequence[str], max_length: int
) -> list[tuple[list[int], int]]:
    """Token ids of the conversation `prompt` + answer `response` in the tokenizer's template, ending in an end
    token (EOS appended where the template ends the turn otherwise), and where each response starts.

    The answer is what the template writes after the generation prompt (for a chat template, with its
    end-of-turn). The whole text is tokenised at once, so that a SentencePiece tokenizer gives the answer's
    ids as they follow the prompt (`쓰`, not the `▁쓰` of the answer alone); the prompt's ids are those of
    the prompt alone, which generation starts from. Where a token would straddle the two, the answer is
    tokenised on its own.
    """
    prompt_texts = render_prompts(tokenizer, prompts)
    whole = tokenizer.apply_chat_template([[*as_messages(p), {"role": "assistant", "content": r}] for p, r in zip(prompts, responses, strict=True)],
                                          tokenize=False) if prompts else []
    answers = []
    for prompt, conversation in zip(prompt_texts, whole, strict=True):
        if not conversation.startswith(prompt):
            raise UsageError("the chat template writes an answered conversation that does not begin with its generation prompt "
                             f"({prompt[-40:]!r} …); kochat cannot tell where the answer starts: use --template kochatgpt or raw")
        answers.append(conversation[len(prompt):].rstrip())
    special = adds_special_tokens(tokenizer)
    prompt_ids = tokenizer(prompt_texts, add_special_tokens=special)["input_ids"]
    joined_ids = tokenizer([p + a for p, a in zip(prompt_texts, answers, strict=True)], add_special_tokens=special)["input_ids"]
    examples = []
    for asked, joined, answer in zip(prompt_ids, joined_ids, answers, strict=True):
        aligned = joined[: len(asked)] == asked
        response = joined[len(asked):] if aligned else tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not response or response[-1] != tokenizer.eos_token_id:
            response = response + [tokenizer.eos_token_id]
        examples.append(join_prompt_response(asked, response, max_length))
    return examples


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


def reward_inputs(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], responses: Sequence[str], max_length: int,
                  reading: EncoderReading | None = None) -> list[list[int]]:
    """The token ids a reward model scores: a decoder reads `template(prompt) + response + EOS` (its
    reward sits at the last token); an encoder (`reading` given) reads the text pair
    `<s> query </s></s> passage </s>` with its prefixes, cut longest side first."""
    if reading is None:
        return [ids for ids, _ in encode_examples(tokenizer, prompts, responses, max_length)]
    return tokenizer([reading.query_prefix + prompt_text(p) for p in prompts], [reading.passage_prefix + r for r in responses],
                     truncation=True, max_length=max_length)["input_ids"]
