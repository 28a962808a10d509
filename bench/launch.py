"""Start `videochat serve --loopback-only` as a child process and wait for it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(
    env: dict[str, str] | None = None, timeout: float = 240.0
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yield (base_url, process); the server's log is printed if startup fails."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", prefix="videochat-", delete=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--loopback-only", "--port", str(port)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited ({process.returncode}):\n{_tail(log.name)}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {timeout} s:\n{_tail(log.name)}")
            time.sleep(0.5)
        process.log_path = log.name  # type: ignore[attr-defined]
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _tail(path: str, lines: int = 60) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
