"""Our GLM-4-Voice model server: token generation over HTTP on 127.0.0.1,
with a cancel that really stops the model.

Upstream's ``model_server.py`` (THUDM/GLM-4-Voice at eb00ce9) runs
``model.generate`` in a thread feeding a queue and streams ``{"token_id": n}``
lines; when the client goes away the thread keeps generating until
``max_new_tokens``, holding the GPU. Here every generation checks a stop flag
between tokens (a ``StoppingCriteria``), set by ``POST /cancel/{id}``, by the
client hanging up, or by the request's deadline; one model is shared by all
sessions and generates for one request at a time (a 9B model on one GPU:
requests queue, and the queue wait counts towards the deadline).

Protocol (newline-delimited JSON, one object per line):

- ``POST /generate`` ``{"request_id", "input_ids", "max_new_tokens",
  "temperature", "top_p", "timeout_s", "end_ids"}`` -> ``{"token_id": n}`` per generated
  token, then ``{"done": reason, "tokens": count}`` with reason ``end`` (an end
  token), ``length``, ``cancelled``, ``timeout`` or ``error`` (``"error"``: the
  message).
- ``POST /cancel/{request_id}`` -> ``{"cancelled": bool}`` (false: not running).
- ``GET /health`` -> ``{"ok": true, "running": n}``.

``python -m models.s2s.glm4voice_server --model DIR --port N`` runs it as a
process (the backend starts it so, or connects to ``s2s.base_url``);
``GenerationServer`` + ``serve_in_thread`` run it in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0


class GenerationRequest(BaseModel):
    request_id: str = Field(min_length=1, max_length=100)
    input_ids: list[int] = Field(min_length=1)
    max_new_tokens: int = Field(2000, ge=1, le=8192)
    temperature: float = Field(0.2, ge=0.0, le=2.0)  # upstream's web demo defaults
    top_p: float = Field(0.8, gt=0.0, le=1.0)
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0.0, le=3600.0)
    # Where the reply ends (GLM-4-Voice: <|user|> and the end-of-text ids);
    # empty: the model's own eos_token_id.
    end_ids: list[int] = Field(default_factory=list, max_length=16)
    seed: int | None = None  # sampling made repeatable (one generation runs at a time)


class Generator(Protocol):
    """Generates for one request at a time, in the calling (worker) thread:
    ``emit`` each new token id, check ``should_stop`` between tokens; returns
    "end" (an end token came) or "length"."""

    def generate(
        self,
        request: GenerationRequest,
        should_stop: Callable[[], bool],
        emit: Callable[[int], None],
    ) -> str: ...


class TransformersGenerator:
    """A transformers causal LM (GlmForCausalLM for GLM-4-Voice-9B) behind
    ``Generator``: ``model.generate`` with a streamer and a stopping criterion
    that reads the stop flag after every token."""

    def __init__(self, model: Any, end_ids: list[int]) -> None:
        self.model = model
        self.end_ids = list(end_ids)

    def generate(
        self,
        request: GenerationRequest,
        should_stop: Callable[[], bool],
        emit: Callable[[int], None],
    ) -> str:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        ended = False
        end_ids = request.end_ids or self.end_ids
        end_set = frozenset(end_ids)

        class Emitter(BaseStreamer):
            """The first ``put`` is the prompt; each later one is one new token."""

            def __init__(self) -> None:
                self.prompt_seen = False

            def put(self, value: Any) -> None:
                nonlocal ended
                if not self.prompt_seen:
                    self.prompt_seen = True
                    return
                for token_id in value.reshape(-1).tolist():
                    ended = ended or token_id in end_set
                    emit(int(token_id))

            def end(self) -> None:
                pass

        class StopFlag(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), should_stop(), dtype=torch.bool)

        device = next(self.model.parameters()).device
        input_ids = torch.tensor([request.input_ids], dtype=torch.long, device=device)
        sampling = request.temperature > 0
        if request.seed is not None:
            torch.manual_seed(request.seed)
        with torch.inference_mode():
            self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=request.max_new_tokens,
                do_sample=sampling,
                temperature=request.temperature if sampling else None,
                top_p=request.top_p if sampling else None,
                top_k=None,
                eos_token_id=end_ids,
                pad_token_id=end_ids[0],
                streamer=Emitter(),
                stopping_criteria=StoppingCriteriaList([StopFlag()]),
            )
        return "end" if ended else "length"


@dataclass
class _Job:
    request: GenerationRequest
    deadline: float  # time.monotonic()
    cancelled: threading.Event = field(default_factory=threading.Event)
    produced: int = 0  # tokens the model made
    produced_at_cancel: int | None = None  # ... when it was told to stop

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() >= self.deadline

    def cancel(self) -> None:
        if self.produced_at_cancel is None:
            self.produced_at_cancel = self.produced
        self.cancelled.set()


@dataclass(frozen=True)
class Finished:
    """How a generation ended: tokens made in all, and after the cancel."""

    reason: str
    produced: int
    after_cancel: int | None  # None: not cancelled


class GenerationServer:
    """The app around one ``Generator``: one generation at a time, each
    stoppable by cancel, hang-up or deadline."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self._lock = threading.Lock()  # one model, one generation at a time
        self.jobs: dict[str, _Job] = {}  # running or waiting for the model
        self.finished: dict[str, Finished] = {}  # the latest ones, by request id

    def cancel(self, request_id: str) -> bool:
        job = self.jobs.get(request_id)
        if job is None:
            return False
        job.cancel()
        return True

    def _run(self, job: _Job, emit: Callable[[int], None]) -> str:
        """In a worker thread: wait for the model (bounded by the deadline),
        then generate until done, cancelled or out of time."""
        while not self._lock.acquire(timeout=0.05):
            if job.should_stop():
                return "cancelled" if job.cancelled.is_set() else "timeout"
        try:
            if job.should_stop():
                return "cancelled" if job.cancelled.is_set() else "timeout"

            def counted(token_id: int) -> None:
                job.produced += 1
                emit(token_id)

            reason = self.generator.generate(job.request, job.should_stop, counted)
        finally:
            self._lock.release()
        if job.cancelled.is_set():
            return "cancelled"
        if time.monotonic() >= job.deadline:
            return "timeout"
        return reason

    async def stream(self, request: GenerationRequest) -> AsyncIterator[bytes]:
        """The response body of one generation. Closing it early (the client
        hung up) stops the generation."""
        if request.request_id in self.jobs:
            yield _line({"done": "error", "error": "request_id in use", "tokens": 0})
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        job = _Job(request, time.monotonic() + request.timeout_s)
        self.jobs[request.request_id] = job

        def emit(token_id: int) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, token_id)

        work = loop.run_in_executor(None, self._run, job, emit)
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
        reason = "cancelled"  # unless it ends otherwise: the client hung up
        try:
            while (token_id := await queue.get()) is not None:
                yield _line({"token_id": token_id})
            try:
                reason = await work
                yield _line({"done": reason, "tokens": job.produced})
            except Exception as exc:  # the model failed: say so, in the protocol
                reason = "error"
                log.exception("generation %s failed", request.request_id)
                yield _line({"done": "error", "error": str(exc), "tokens": job.produced})
        finally:
            # No await here: a hung-up client's cancellation would cut it short.
            if not work.done():  # the client went away: stop the model
                job.cancel()
            work.add_done_callback(lambda _: self._forget(job, reason))

    def _forget(self, job: _Job, reason: str) -> None:
        """The generation is over and the model free: record how it ended."""
        request_id = job.request.request_id
        self.jobs.pop(request_id, None)
        after = None if job.produced_at_cancel is None else job.produced - job.produced_at_cancel
        self.finished[request_id] = Finished(reason, job.produced, after)
        while len(self.finished) > 100:
            del self.finished[next(iter(self.finished))]
        log.info(
            "generation %s: %s after %d tokens%s",
            request_id,
            reason,
            job.produced,
            "" if after is None else f" ({after} after the cancel)",
        )

    def app(self) -> Any:
        from fastapi import FastAPI
        from fastapi.responses import StreamingResponse

        class ClosingStream(StreamingResponse):
            """Closes its body as soon as sending fails (the client went
            away), so the generation stops now, not when the body happens
            to be garbage-collected."""

            async def stream_response(self, send: Any) -> None:
                try:
                    await super().stream_response(send)
                finally:
                    await self.body_iterator.aclose()  # type: ignore[attr-defined]

        app = FastAPI(title="GLM-4-Voice generation")
        server = self

        @app.post("/generate")
        async def generate(request: GenerationRequest) -> StreamingResponse:
            return ClosingStream(server.stream(request), media_type="application/x-ndjson")

        @app.post("/cancel/{request_id}")
        async def cancel(request_id: str) -> dict[str, bool]:
            return {"cancelled": server.cancel(request_id)}

        @app.get("/health")
        async def health() -> dict[str, Any]:
            return {"ok": True, "running": len(server.jobs)}

        return app


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serve_in_thread(server: GenerationServer, port: int | None = None) -> Iterator[str]:
    """Serve on 127.0.0.1 from a thread of this process; yields the base URL."""
    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(server.app(), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="glm4voice-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not uv.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the GLM-4-Voice generation server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


def main(argv: list[str] | None = None) -> None:
    """The server as its own process, on the 9B model (or any GLM folder)."""
    import uvicorn

    from models.s2s.glm4voice_checkpoint import load_language_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="weights/glm-4-voice/glm-4-voice-9b")
    parser.add_argument("--port", type=int, default=10000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    model, end_ids = load_language_model(args.model, args.device, args.dtype)
    server = GenerationServer(TransformersGenerator(model, end_ids))
    # 127.0.0.1 only: the server has no authentication.
    uvicorn.run(server.app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
