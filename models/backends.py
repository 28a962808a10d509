"""Backends by stage and name.

A backend registers once, in its own file, with ``@backend("asr", "funasr")``
on its class; the class builds itself from its config section
(``from_config``). Adding a backend is adding one file to the stage's package
(models/asr/, models/tts/, ...): every module there is imported the first time
a name of that stage is looked up, and their heavy imports (torch, onnxruntime)
happen inside the classes, so looking names up is cheap.

The config holds backend names as plain strings (core/ cannot import models/);
``check_backends`` refuses an unknown one with a ConfigError listing the
registered names, before any model loads.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, TypeVar, overload

from core.config import ConfigError
from models.base import (
    AvatarModel,
    ChatModel,
    SpeechRecognizer,
    SpeechSynthesizer,
    SpeechToSpeech,
    VADModel,
)

if TYPE_CHECKING:
    from core.config import Config

Stage = Literal["vad", "asr", "llm", "tts", "s2s", "avatar"]
# The contract each stage's backends implement; their package is models.<stage>.
CONTRACTS: dict[Stage, type] = {
    "vad": VADModel,
    "asr": SpeechRecognizer,
    "llm": ChatModel,
    "tts": SpeechSynthesizer,
    "s2s": SpeechToSpeech,
    "avatar": AvatarModel,
}
# Stages every configuration names a backend for ("s2s" is off unless named).
REQUIRED_STAGES: tuple[Stage, ...] = ("vad", "asr", "llm", "tts", "avatar")

B = TypeVar("B")

_registered: dict[Stage, dict[str, type]] = {stage: {} for stage in CONTRACTS}
_discovered: set[Stage] = set()
_discovery_lock = threading.Lock()  # models load in several threads at start-up


def backend(stage: Stage, name: str) -> Callable[[type[B]], type[B]]:
    """Class decorator: register the class as ``stage``'s backend ``name``."""
    contract = CONTRACTS[stage]

    def register(cls: type[B]) -> type[B]:
        if not issubclass(cls, contract):
            raise TypeError(f"{cls.__name__} is not a {contract.__name__}")
        if not _builds_itself(cls, contract):
            raise TypeError(f"{cls.__name__} must define from_config to be a backend")
        known = _registered[stage].get(name)
        # A module imported twice (importlib.reload) registers the same class again.
        if known is not None and _qualified(known) != _qualified(cls):
            raise ValueError(
                f"{stage} backend {name!r} is already {_qualified(known)}, not {_qualified(cls)}"
            )
        _registered[stage][name] = cls
        return cls

    return register


def _builds_itself(cls: type, contract: type) -> bool:
    """Whether ``cls`` (or a class between it and the contract) defines from_config."""
    for klass in cls.__mro__:
        if klass is contract:
            return False
        if "from_config" in vars(klass):
            return True
    return False


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _discover(stage: Stage) -> None:
    """Import every module of models.<stage> so that their backends register."""
    with _discovery_lock:
        if stage in _discovered:
            return
        package = importlib.import_module(f"models.{stage}")
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")
        _discovered.add(stage)


def backend_names(stage: Stage) -> list[str]:
    """The names registered for ``stage``, sorted."""
    _discover(stage)
    return sorted(_registered[stage])


def _unknown(stage: Stage, name: str) -> str:
    known = ", ".join(backend_names(stage)) or "none yet"
    return f"  {stage}.backend: unknown backend {name!r} (known here: {known})"


@overload
def backend_class(stage: Literal["vad"], name: str) -> type[VADModel]: ...
@overload
def backend_class(stage: Literal["asr"], name: str) -> type[SpeechRecognizer]: ...
@overload
def backend_class(stage: Literal["llm"], name: str) -> type[ChatModel]: ...
@overload
def backend_class(stage: Literal["tts"], name: str) -> type[SpeechSynthesizer]: ...
@overload
def backend_class(stage: Literal["s2s"], name: str) -> type[SpeechToSpeech]: ...
@overload
def backend_class(stage: Literal["avatar"], name: str) -> type[AvatarModel]: ...
def backend_class(stage: Stage, name: str) -> type:
    """The class registered as ``stage``'s backend ``name`` (ConfigError if none)."""
    _discover(stage)
    cls = _registered[stage].get(name)
    if cls is None:
        raise ConfigError("bad configuration:\n" + _unknown(stage, name))
    return cls


def check_backends(config: Config) -> None:
    """Refuse backend names nobody registered, all at once, before any model loads."""
    named: list[tuple[Stage, str]] = [(s, getattr(config, s).backend) for s in REQUIRED_STAGES]
    if config.s2s.backend:
        named.append(("s2s", config.s2s.backend))
    problems = [_unknown(stage, name) for stage, name in named if name not in backend_names(stage)]
    if problems:
        raise ConfigError("bad configuration:\n" + "\n".join(problems))
