"""LLM backend ``embedded`` (the default): xllamacpp's llama.cpp server,
started in this process on 127.0.0.1 and loaded once.

We run the model through its HTTP server rather than its in-process call API
because (1) the same client code (models/llm/openai_compatible.py) then serves
every backend, so what we test is what users of vLLM run, and (2) llama.cpp's
server gives each conversation its own KV-cache slot (``id_slot``) so a warm
prompt survives turns of other sessions.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from core.config import Config, LLMConfig
from models.backends import backend
from models.base import BackendNeeds, BackendUnavailable, PackageNeed, WeightNeed
from models.llm.openai_compatible import OpenAICompatibleChat
from models.needs import MB, VIDEOCHAT_WEIGHTS
from models.threads import run_in_low_priority_thread

log = logging.getLogger(__name__)


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@backend("llm", "embedded")
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
            config, base_url=f"http://127.0.0.1:{self.port}/v1", slots=int(config.parallel_slots)
        )
        self._server: Any = None
        # Where llama.cpp saves and restores slots: the persona's KV cache is
        # computed once and copied into every slot.
        self._slot_dir = tempfile.TemporaryDirectory(prefix="videochat-slots-")

    @classmethod
    def needs(cls, config: Config) -> BackendNeeds:
        """What ``videochat doctor`` checks (its own: ``openai``'s is not inherited)."""
        return BackendNeeds(
            packages=(PackageNeed("xllamacpp", "pip install -e ."),),
            weights=(WeightNeed(config.llm.model_file, 100 * MB, VIDEOCHAT_WEIGHTS),),
        )

    @classmethod
    def from_config(
        cls, config: LLMConfig, weights_dir: Path, *, nice: int = 0
    ) -> EmbeddedLlamaChat:
        return cls(config, weights_dir, nice=nice)

    async def start(self, warm: bool = True) -> None:
        if self._server is None:
            await run_in_low_priority_thread(self._start_server, self.nice)
            if warm:
                await self.prime_all_slots()

    def _start_server(self) -> None:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(self.model_path)
        params.n_ctx = self.config.context_tokens * int(self.config.parallel_slots)
        params.n_parallel = int(self.config.parallel_slots)
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
            int(self.config.parallel_slots),
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
                for slot in range(1, int(self.config.parallel_slots)):
                    restored = await client.post(
                        f"/slots/{slot}?action=restore", json={"filename": "persona.bin"}
                    )
                    restored.raise_for_status()
        except httpx.HTTPError as exc:  # an optimisation: sessions prime their slot anyway
            log.warning("could not copy the persona's KV cache into every slot: %s", exc)
        log.info(
            "LLM persona cached in %.2f s, copied to %d slots in %.2f s",
            primed - started,
            int(self.config.parallel_slots),
            time.perf_counter() - primed,
        )

    async def close(self) -> None:
        await super().close()
        self._server = None  # the destructor stops llama.cpp's loop
        self._slot_dir.cleanup()
