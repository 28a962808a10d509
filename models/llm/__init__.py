"""Chat models: one backend per module, registered by name.

* ``embedded`` (the default): llama.cpp (xllamacpp) serving the local GGUF
  model on 127.0.0.1, continues a trailing assistant message (openers).
* ``openai``: any OpenAI-compatible endpoint (vLLM, Ollama, a hosted API).
"""

from __future__ import annotations

from pathlib import Path

from core.config import LLMConfig
from models.backends import backend_class
from models.base import ChatModel


def load_chat_model(config: LLMConfig, weights_dir: str | Path, nice: int = 0) -> ChatModel:
    """Build the LLM backend named by ``config.backend`` (ConfigError for a name
    nobody registered, BackendUnavailable if it cannot run here)."""
    cls = backend_class("llm", config.backend)
    return cls.from_config(config, Path(weights_dir), nice=nice)
