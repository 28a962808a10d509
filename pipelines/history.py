"""Conversation history with a bounded size that never loses the persona."""

from __future__ import annotations

from collections.abc import Sequence

from models.base import ChatMessage


class ChatHistory:
    def __init__(self, system_prompt: str, max_messages: int = 12) -> None:
        self.system_prompt = system_prompt
        self.max_messages = max(2, max_messages)
        self._turns: list[ChatMessage] = []

    def add_user(self, text: str) -> None:
        if self._turns and self._turns[-1]["role"] == "user":
            # Two user messages in a row (the reply was cut before any audio):
            # merge them, so roles keep alternating.
            self._turns[-1] = {"role": "user", "content": f"{self._turns[-1]['content']} {text}"}
        else:
            self._turns.append({"role": "user", "content": text})
        self._trim()

    def add_assistant(self, text: str) -> None:
        if text and self._turns and self._turns[-1]["role"] == "user":
            self._turns.append({"role": "assistant", "content": text})
            self._trim()

    def restore(self, turns: Sequence[ChatMessage]) -> None:
        """Continue from earlier turns (a reconnect), trimmed as usual."""
        self._turns = [
            {"role": m["role"], "content": m["content"]}
            for m in turns
            if m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
        ]
        self._trim()

    def drop_unanswered(self) -> None:
        """Forget a trailing user message that got no answer (the LLM failed),
        so it is not merged into the next question."""
        if self._turns and self._turns[-1]["role"] == "user":
            del self._turns[-1]

    def messages_with_user(self, text: str) -> list[ChatMessage]:
        """What ``messages()`` will be after ``add_user(text)``, without changing
        the history (a speculative turn may still be dropped)."""
        preview = ChatHistory(self.system_prompt, self.max_messages)
        preview._turns = list(self._turns)
        preview.add_user(text)
        return preview.messages()

    def next_prefix(self) -> list[ChatMessage]:
        """The messages the next turn's prompt starts with (its question left
        out, the history trimmed as adding it will): what to pre-process."""
        return self.messages_with_user("?")[:-1]

    def messages(self) -> list[ChatMessage]:
        """What is sent to the LLM: the system prompt, always, then recent turns."""
        return [{"role": "system", "content": self.system_prompt}, *self._turns]

    @property
    def turns(self) -> list[ChatMessage]:
        return list(self._turns)

    def _trim(self) -> None:
        excess = len(self._turns) - self.max_messages
        if excess > 0:
            del self._turns[:excess]
        # The history must start with a user message.
        while self._turns and self._turns[0]["role"] != "user":
            del self._turns[0]
