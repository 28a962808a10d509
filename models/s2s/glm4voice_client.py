"""The backend's side of our GLM-4-Voice model server (glm4voice_server.py):
stream a generation's token ids, cancel it, check the server is up."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx

CONNECT_TIMEOUT_S = 5.0
# The server enforces a request's deadline and says so; the client waits this
# much longer before it gives up on a silent server itself.
READ_MARGIN_S = 10.0


class ModelServerError(RuntimeError):
    """The model server failed the request (its message says why)."""


class GenerationClient:
    """One HTTP client per process, shared by the conversations."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        # The read timeout bounds the wait for each next token; the server
        # enforces the request's whole deadline (``timeout_s``) itself.
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s + READ_MARGIN_S, connect=CONNECT_TIMEOUT_S),
            trust_env=False,  # 127.0.0.1: never through a proxy
        )

    async def generate(self, request: dict[str, Any]) -> AsyncGenerator[int, None]:
        """Token ids as the model makes them. Ends when the model is done or
        the generation was cancelled; TimeoutError when the server's deadline
        passed, ModelServerError when it failed. Leaving the iteration early
        closes the connection, which stops the generation on the server."""
        body = {"timeout_s": self.timeout_s, **request}
        try:
            async with self._http.stream("POST", "/generate", json=body) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode(errors="replace")[:300]
                    raise ModelServerError(
                        f"model server answered {response.status_code}: {detail}"
                    )
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if "token_id" in message:
                        yield int(message["token_id"])
                        continue
                    done = message.get("done")
                    if done == "timeout":
                        raise TimeoutError(
                            f"the model server stopped the reply after {body['timeout_s']:.0f} s"
                        )
                    if done == "error":
                        raise ModelServerError(message.get("error", "unknown error"))
                    return
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"the model server at {self.base_url} went silent") from exc
        raise ModelServerError("the model server closed the stream without finishing")

    async def cancel(self, request_id: str) -> bool:
        """Stop a generation now; False if it was not running."""
        response = await self._http.post(f"/cancel/{request_id}")
        response.raise_for_status()
        return bool(response.json().get("cancelled"))

    async def healthy(self) -> bool:
        try:
            response = await self._http.get("/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        await self._http.aclose()
