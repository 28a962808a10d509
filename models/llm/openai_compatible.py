"""LLM backend ``openai``: any OpenAI-compatible streaming endpoint (vLLM,
Ollama, a hosted API). The embedded llama.cpp backend (models/llm/embedded.py)
is this same client pointed at a server in this process, so the code path the
tests run is the one vLLM users run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from core.config import LLMConfig
from models.backends import backend
from models.base import BackendUnavailable, ChatMessage, ChatModel

log = logging.getLogger(__name__)


@backend("llm", "openai")
class OpenAICompatibleChat(ChatModel):
    """Streams chat completions from any OpenAI-compatible endpoint."""

    def __init__(self, config: LLMConfig, base_url: str | None = None, slots: int = 0) -> None:
        self.config = config
        self.base_url = (base_url or config.base_url).rstrip("/")
        if not self.base_url:
            raise BackendUnavailable(
                "llm.backend 'openai' needs llm.base_url (e.g. http://127.0.0.1:8001/v1 for a "
                "vLLM server: `vllm serve Qwen/Qwen2.5-7B-Instruct`), set in the config or "
                "VIDEOCHAT_LLM__BASE_URL"
            )
        self._slots = slots  # >0: pin conversations to llama.cpp slots
        self._slot_of: dict[str, int] = {}  # conversation -> its own slot
        self._client: Any = None

    @classmethod
    def from_config(
        cls, config: LLMConfig, weights_dir: Path, *, nice: int = 0
    ) -> OpenAICompatibleChat:
        return cls(config)  # the endpoint runs elsewhere: no weights, no threads of ours

    def _get_client(self) -> Any:
        if self._client is None:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(
                base_url=self.base_url, api_key=self.config.api_key or "none", max_retries=0
            )
        return self._client

    def _slot(self, conversation: str) -> int | None:
        """The conversation's own slot: the lowest free one on first use, kept
        until ``release``; None when every slot is taken."""
        slot = self._slot_of.get(conversation)
        if slot is None:
            taken = set(self._slot_of.values())
            slot = next((s for s in range(self._slots) if s not in taken), None)
            if slot is not None:
                self._slot_of[conversation] = slot
        return slot

    def _extra_body(self, conversation: str | None) -> dict[str, Any]:
        if not self._slots or conversation is None:
            return {}
        # One slot per conversation keeps its whole history in the KV cache. Two
        # conversations must never share one: llama.cpp runs a busy slot's
        # requests one after the other (the second waits for the whole first
        # reply), and a shared slot has answered one user with another's context.
        slot = self._slot(conversation)
        if slot is None:  # more conversations than slots: llama.cpp picks one
            return {"cache_prompt": True}
        return {"id_slot": slot, "cache_prompt": True}

    def release(self, conversation: str) -> None:
        self._slot_of.pop(conversation, None)

    async def stream_chat(
        self, messages: Sequence[ChatMessage], *, conversation: str | None = None
    ) -> AsyncIterator[str]:
        client = self._get_client()
        stream = await client.chat.completions.create(
            model=self.config.model,
            messages=list(messages),
            stream=True,
            max_tokens=self.config.max_tokens,
            temperature=self.config.temperature,
            extra_body=self._extra_body(conversation) or None,
        )
        try:
            async for chunk in stream:
                timings = (getattr(chunk, "model_extra", None) or {}).get("timings")
                if timings:  # llama.cpp's last chunk: how much of the prompt was cached
                    log.debug("llm %s timings %s", conversation, timings)
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta.content
                if delta:
                    yield delta
        finally:
            # Closing the HTTP response makes llama.cpp/vLLM stop generating.
            await stream.close()

    async def prime(self, messages: Sequence[ChatMessage], conversation: str) -> None:
        if not self._slots:
            return
        started = time.perf_counter()
        try:
            await self._get_client().chat.completions.create(
                model=self.config.model,
                messages=list(messages),
                max_tokens=1,
                extra_body=self._extra_body(conversation),
            )
        except Exception as exc:  # priming is an optimisation; never fail a session for it
            log.warning("could not prime the LLM cache: %s", exc)
            return
        log.info("LLM slot for %s primed in %.2f s", conversation, time.perf_counter() - started)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
