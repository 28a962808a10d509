"""LLM backend ``openai``: any OpenAI-compatible streaming endpoint (vLLM,
Ollama, a hosted API). The embedded llama.cpp backend (models/llm/embedded.py)
is this same client pointed at a server in this process, so the code path the
tests run is the one vLLM users run.

Openers need the server to continue a trailing assistant message. llama.cpp
does so by itself; vLLM does when asked with its chat-completions extra
fields ``continue_final_message: true, add_generation_prompt: false``
(vllm/entrypoints/openai/protocol.py, ``ChatCompletionRequest``, vLLM at
0052bed); other servers answer the message instead, so openers are off there.
``llm.server`` says which server it is, or "auto": its ``GET /models`` answer
(vLLM's ``ModelCard.owned_by`` is "vllm", llama.cpp's server says "llamacpp").

Every request is bounded (``llm.connect_timeout_s``; no byte for
``llm.first_token_timeout_s``; the whole reply ``llm.reply_timeout_s``); a
request past a bound raises ``LLMRequestFailed``, which the pipeline treats as
any other LLM failure: the avatar says its fault line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from core.config import LLMConfig
from models.backends import backend
from models.base import (
    BackendNeeds,
    BackendUnavailable,
    ChatMessage,
    ChatModel,
    PackageNeed,
)

if TYPE_CHECKING:
    from core.config import Config

log = logging.getLogger(__name__)

ServerKind = Literal["vllm", "llama.cpp", "openai"]
# Servers that continue a trailing assistant message (what openers need).
CONTINUING_SERVERS: frozenset[str] = frozenset({"vllm", "llama.cpp"})
# What each server calls itself in its /models listing ("owned_by").
_OWNERS: dict[str, ServerKind] = {"vllm": "vllm", "llamacpp": "llama.cpp"}
# vLLM's extra fields for continuing the last (assistant) message.
VLLM_CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}


class LLMRequestFailed(RuntimeError):
    """The LLM server could not be reached or did not answer within a bound.
    Deliberately not a TimeoutError: the reply writer reports those as its own
    first-token limit."""


def identify_server(
    base_url: str, api_key: str = "none", timeout_s: float = 5.0
) -> tuple[ServerKind | None, list[str]]:
    """Which server answers at ``base_url`` (from ``GET /models``) and the
    model names it serves; (None, []) when it does not answer."""
    import httpx

    try:
        response = httpx.get(
            f"{base_url.rstrip('/')}/models",
            headers={"Authorization": f"Bearer {api_key or 'none'}"},
            timeout=timeout_s or None,
        )
        response.raise_for_status()
        models = response.json().get("data") or []
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        log.debug("could not ask %s/models which server it is: %s", base_url, exc)
        return None, []
    models = [m for m in models if isinstance(m, dict)]
    owners = {str(m.get("owned_by", "")).lower() for m in models}
    kind: ServerKind = next((_OWNERS[o] for o in owners if o in _OWNERS), "openai")
    return kind, [str(m.get("id", "")) for m in models]


@backend("llm", "openai")
class OpenAICompatibleChat(ChatModel):
    """Streams chat completions from any OpenAI-compatible endpoint."""

    def __init__(
        self,
        config: LLMConfig,
        base_url: str | None = None,
        slots: int = 0,
        server: ServerKind | None = None,
    ) -> None:
        self.config = config
        self.base_url = (base_url or config.base_url).rstrip("/")
        if not self.base_url:
            raise BackendUnavailable(
                "llm.backend 'openai' needs llm.base_url (e.g. http://127.0.0.1:8001/v1 for a "
                "vLLM server: `vllm serve Qwen/Qwen2.5-7B-Instruct`), set in the config or "
                "VIDEOCHAT_LLM__BASE_URL"
            )
        if type(self).supports_prefill:
            # A subclass that runs its own server says so by its class flag
            # (embedded: llama.cpp, which continues a message by itself).
            server = "llama.cpp"
        elif server is None:
            server = "openai" if config.server == "auto" else config.server
        self.server: ServerKind = server
        self.supports_prefill = server in CONTINUING_SERVERS
        self._slots = slots  # >0: pin conversations to llama.cpp slots
        self._slot_of: dict[str, int] = {}  # conversation -> its own slot
        self._client: Any = None
        self._say_whether_openers_work()

    @classmethod
    def from_config(
        cls, config: LLMConfig, weights_dir: Path, *, nice: int = 0
    ) -> OpenAICompatibleChat:
        # The endpoint runs elsewhere: no weights, no threads of ours.
        server: ServerKind | None = None
        if config.server != "auto":
            server = config.server
        elif config.base_url:
            # Asked once, before the pipeline decides on openers; blocking, at
            # start-up only, for at most llm.connect_timeout_s.
            server, served = identify_server(
                config.base_url, config.api_key, config.connect_timeout_s
            )
            if server is None:
                log.warning(
                    "%s/models did not answer: which server it is is unknown", config.base_url
                )
            else:
                log.info("LLM server at %s: %s, serving %s", config.base_url, server, served)
            if served and config.model not in served:
                log.warning(
                    "llm.model %r is not among the models %s serves (%s): requests will fail; "
                    "set llm.model to one of them (vLLM: its --served-model-name)",
                    config.model,
                    config.base_url,
                    ", ".join(served),
                )
        return cls(config, server=server)

    @classmethod
    def needs(cls, config: Config) -> BackendNeeds:
        return BackendNeeds(
            packages=(PackageNeed("openai", "pip install -e .  (openai is a default dependency)"),),
            external=(
                f"an OpenAI-compatible server at llm.base_url ({config.llm.base_url or 'unset'}) "
                f"serving llm.model {config.llm.model!r}; for vLLM see docs/backends.md"
            ),
        )

    def _say_whether_openers_work(self) -> None:
        """Openers decide at start-up; say here, once, whether they can work."""
        if not (self.config.use_openers and self.config.openers):
            return
        if self.server == "vllm":
            log.info("openers on: vLLM continues them (continue_final_message)")
        elif not self.supports_prefill:
            log.warning(
                "openers are off: the LLM server at %s is not known to continue a message "
                "(llm.server: %s%s); set llm.server to vllm or llama.cpp if it is one",
                self.base_url,
                self.config.server,
                "" if self.config.server != "auto" else ", and it did not say it was either",
            )

    def _get_client(self) -> Any:
        if self._client is None:
            from openai import AsyncOpenAI, Timeout

            connect = self.config.connect_timeout_s or None
            self._client = AsyncOpenAI(
                base_url=self.base_url,
                api_key=self.config.api_key or "none",
                max_retries=0,
                # Connecting is bounded here; waiting for an answer is bounded per
                # streamed request (below), not for priming, which may take long.
                timeout=Timeout(600.0, connect=connect, pool=connect),
            )
        return self._client

    def _stream_timeout(self) -> Any:
        from openai import Timeout

        connect = self.config.connect_timeout_s or None
        # No byte for this long, before the first token or between two, is a stall.
        read = float(self.config.first_token_timeout_s) or None
        return Timeout(connect=connect, read=read, write=connect, pool=connect)

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

    def request_extras(
        self, messages: Sequence[ChatMessage], conversation: str | None
    ) -> dict[str, Any]:
        """The non-OpenAI fields of a chat request (sent as ``extra_body``)."""
        extra = self._extra_body(conversation)
        if self.server == "vllm" and messages and messages[-1]["role"] == "assistant":
            extra.update(VLLM_CONTINUE)  # continue the opener, do not answer it
        return extra

    def release(self, conversation: str) -> None:
        self._slot_of.pop(conversation, None)

    async def stream_chat(
        self, messages: Sequence[ChatMessage], *, conversation: str | None = None
    ) -> AsyncIterator[str]:
        import openai

        limit = self.config.reply_timeout_s
        deadline = time.monotonic() + limit if limit else None
        stream: Any = None
        try:
            stream = await self._get_client().chat.completions.create(
                model=self.config.model,
                messages=list(messages),
                stream=True,
                max_tokens=self.config.max_tokens,
                temperature=self.config.temperature,
                extra_body=self.request_extras(messages, conversation) or None,
                timeout=self._stream_timeout(),
            )
            chunks = aiter(stream)
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError  # the whole reply's time is up
                try:
                    chunk = await asyncio.wait_for(anext(chunks), left)
                except StopAsyncIteration:
                    break
                timings = (getattr(chunk, "model_extra", None) or {}).get("timings")
                if timings:  # llama.cpp's last chunk: how much of the prompt was cached
                    log.debug("llm %s timings %s", conversation, timings)
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta.content
                if delta:
                    yield delta
        except TimeoutError:
            raise LLMRequestFailed(
                f"the reply from {self.base_url} took longer than {limit:g} s (llm.reply_timeout_s)"
            ) from None
        except openai.APITimeoutError as exc:  # openai wraps its HTTP library's errors
            raise LLMRequestFailed(self._timed_out(exc)) from exc
        except openai.APIConnectionError as exc:
            message = f"cannot reach the LLM server at {self.base_url}: {exc}"
            raise LLMRequestFailed(message) from exc
        finally:
            if stream is not None:
                # Closing the HTTP response makes llama.cpp/vLLM stop generating.
                await stream.close()

    def _timed_out(self, exc: BaseException) -> str:
        # The HTTP library's own error says which bound it was (by name: openai
        # has used httpx and httpx2).
        if type(exc.__cause__).__name__ in ("ConnectTimeout", "PoolTimeout"):
            return (
                f"could not connect to the LLM server at {self.base_url} within "
                f"{self.config.connect_timeout_s:g} s (llm.connect_timeout_s)"
            )
        return (
            f"the LLM server at {self.base_url} sent nothing for "
            f"{float(self.config.first_token_timeout_s):g} s (llm.first_token_timeout_s)"
        )

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
        log.debug("LLM slot for %s primed in %.2f s", conversation, time.perf_counter() - started)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
