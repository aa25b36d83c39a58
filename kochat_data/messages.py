"""Conversations as TRL writes them: lists of `{role, content}` messages.

A prompt that is a conversation keeps its messages (a chat template renders them); its text,
which identifies the prompt across files and kinds and which the KoChatGPT template shows, is
the lone question as it is or the dialogue as `<사람>: …` / `<챗봇>: …` lines, as the KoChatGPT
conversation file's prompts are written. A system message is part of the messages, not of the text.
"""

from __future__ import annotations

from kochat_data.reading import BOT, HUMAN, render_dialogue
from kochat_data.text import normalize

ROLES = ("system", "user", "assistant")
SPEAKERS = {"user": HUMAN, "assistant": BOT}


class MessageError(ValueError):
    """A message list that is not a conversation kochat can read; the text says what is wrong."""


def is_message_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(message, dict) for message in value)


def checked_messages(value: object) -> list[dict[str, str]]:
    """The messages with NFC contents and only `role` and `content`, or MessageError."""
    if not isinstance(value, list) or not value:
        raise MessageError("expected a non-empty list of {role, content} messages")
    messages = []
    for position, message in enumerate(value):
        if not isinstance(message, dict):
            raise MessageError(f"message {position}: expected an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise MessageError(f"message {position}: role {role!r}, expected one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise MessageError(f"message {position}: expected non-empty text content")
        if role == "system" and position != 0:
            raise MessageError(f"message {position}: a system message must come first")
        messages.append({"role": role, "content": normalize(content)})
    return messages


def prompt_messages(value: object) -> list[dict[str, str]]:
    """A conversation that asks: checked, with at least one user turn and ending with one."""
    messages = checked_messages(value)
    if messages[-1]["role"] != "user":
        raise MessageError(f"a prompt must end with a user message, got {messages[-1]['role']}")
    return messages


def answer_message(value: object) -> str:
    """The content of a completion written as messages: exactly one assistant message."""
    messages = checked_messages(value)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = ", ".join(message["role"] for message in messages)
        raise MessageError(f"expected one assistant message, got {roles}")
    return messages[0]["content"]


def dialogue_text(messages: list[dict[str, str]]) -> str:
    """The text of a conversation prompt (see the module docstring)."""
    return render_dialogue([(SPEAKERS[m["role"]], m["content"]) for m in messages if m["role"] != "system"])


def plain(messages: list[dict[str, str]]) -> bool:
    """A single user question: its text says all, so no messages need keeping."""
    return len(messages) == 1 and messages[0]["role"] == "user"


def assistant_turns(messages: list[dict[str, str]]) -> list[tuple[list[dict[str, str]], str]]:
    """(the conversation before it, its content) for every assistant turn that answers a user turn."""
    turns, seen_user = [], False
    for position, message in enumerate(messages):
        if message["role"] == "assistant" and seen_user:
            turns.append((messages[:position], message["content"]))
        seen_user = seen_user or message["role"] == "user"
    if not turns:
        raise MessageError("no assistant message after a user message")
    return turns


def split_pair(chosen: list[dict[str, str]], rejected: list[dict[str, str]]) -> tuple[list[dict[str, str]], str, str]:
    """Two whole conversations (TRL's implicit prompt): the messages they share and each one's last answer."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    answers = []
    for side, conversation in (("chosen", chosen), ("rejected", rejected)):
        rest = conversation[shared:]
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            raise MessageError(f"{side}: expected the shared conversation and one assistant message after it, "
                               f"got {len(rest)} message(s) after {shared} shared")
        answers.append(rest[0]["content"])
    return chosen[:shared], answers[0], answers[1]


def split_texts(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Two texts that start alike (TRL's implicit prompt as text): the shared start, cut back to a
    space so that no word is split, and the rest of each."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared < min(len(chosen), len(rejected)):
        shared = chosen.rfind(" ", 0, shared + 1) + 1
    prompt = chosen[:shared].strip()
    if not prompt or not chosen[shared:].strip() or not rejected[shared:].strip():
        raise MessageError("chosen and rejected share no prompt: give a prompt field, or conversations")
    return prompt, chosen[shared:].strip(), rejected[shared:].strip()
