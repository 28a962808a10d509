"""Chat models behind one OpenAI-compatible streaming client.

Every backend is an OpenAI-compatible endpoint: vLLM, Ollama, llama.cpp's
server, a hosted API, or the embedded default, xllamacpp's llama.cpp server
started in this process on 127.0.0.1. We run the embedded model through its
HTTP server rather than its in-process call API because (1) the same client
code then serves every backend, so what we test is what users of vLLM run,
and (2) llama.cpp's server gives each conversation its own KV-cache slot
(``id_slot``) so a warm prompt survives turns of other sessions.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from core.config import LLMConfig
from models.base import BackendUnavailable, ChatMessage, ChatModel
from models.threads import run_in_low_priority_thread

log = logging.getLogger(__name__)


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


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedLlamaChat(OpenAICompatibleChat):
    """xllamacpp's llama.cpp server on 127.0.0.1, loaded once per process."""

    supports_prefill = True  # llama.cpp continues a trailing assistant message

    def __init__(self, config: LLMConfig, weights_dir: Path, nice: int = 0) -> None:
        self.nice = nice  # llama.cpp's threads run below the media threads' priority
        model_path = weights_dir / config.model_file
        if not model_path.is_file():
            raise BackendUnavailable(
                f"LLM weights not found at {model_path}: run `videochat weights` (or `make run`)"
            )
        self.model_path = model_path
        self.port = _free_loopback_port()
        super().__init__(
            config, base_url=f"http://127.0.0.1:{self.port}/v1", slots=config.parallel_slots
        )
        self._server: Any = None
        # Where llama.cpp saves and restores slots: the persona's KV cache is
        # computed once and copied into every slot.
        self._slot_dir = tempfile.TemporaryDirectory(prefix="videochat-slots-")

    async def start(self, warm: bool = True) -> None:
        if self._server is None:
            await run_in_low_priority_thread(self._start_server, self.nice)
            if warm:
                await self.prime_all_slots()

    def _start_server(self) -> None:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(self.model_path)
        params.n_ctx = self.config.context_tokens * self.config.parallel_slots
        params.n_parallel = self.config.parallel_slots
        params.cpuparams.n_threads = int(self.config.threads)
        # Prompt processing (a batch of tokens) may use more threads than
        # decoding one token at a time: it is compute-bound and short.
        params.cpuparams_batch.n_threads = int(self.config.batch_threads)
        params.hostnames = ["127.0.0.1"]
        params.port = self.port
        params.cache_prompt = True
        params.slot_save_path = str(self._slot_dir.name)
        params.verbosity = 0
        started = time.perf_counter()
        self._server = xllamacpp.Server(params)
        log.info(
            "LLM %s loaded in %.1f s, serving on 127.0.0.1:%d (%d slots)",
            self.model_path.name,
            time.perf_counter() - started,
            self.port,
            self.config.parallel_slots,
        )

    async def prime_all_slots(self) -> None:
        """Process the persona (system prompt) once, in slot 0, and copy that KV
        cache into every other slot, so no conversation's first question waits
        for it (10 s on a slow 2-core machine). Each conversation's own slot
        then re-processes only what follows the system prompt."""
        import httpx

        started = time.perf_counter()
        messages = [{"role": "system", "content": self.config.system_prompt}]
        await self._get_client().chat.completions.create(
            model=self.config.model,
            messages=messages,
            max_tokens=1,
            extra_body={"id_slot": 0, "cache_prompt": True},
        )
        primed = time.perf_counter()
        root = self.base_url.removesuffix("/v1")
        try:
            async with httpx.AsyncClient(base_url=root, timeout=60) as client:
                saved = await client.post("/slots/0?action=save", json={"filename": "persona.bin"})
                saved.raise_for_status()
                for slot in range(1, self.config.parallel_slots):
                    restored = await client.post(
                        f"/slots/{slot}?action=restore", json={"filename": "persona.bin"}
                    )
                    restored.raise_for_status()
        except httpx.HTTPError as exc:  # an optimisation: sessions prime their slot anyway
            log.warning("could not copy the persona's KV cache into every slot: %s", exc)
        log.info(
            "LLM persona cached in %.2f s, copied to %d slots in %.2f s",
            primed - started,
            self.config.parallel_slots,
            time.perf_counter() - primed,
        )

    async def close(self) -> None:
        await super().close()
        self._server = None  # the destructor stops llama.cpp's loop
        self._slot_dir.cleanup()


def load_chat_model(config: LLMConfig, weights_dir: Path, nice: int = 0) -> ChatModel:
    if config.backend == "embedded":
        return EmbeddedLlamaChat(config, weights_dir, nice=nice)
    if config.backend == "openai":
        return OpenAICompatibleChat(config)
    raise BackendUnavailable(f"unknown llm.backend {config.backend!r}")
