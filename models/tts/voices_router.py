"""Voices of more than one TTS backend behind one synthesizer.

``tts.backend`` is the primary synthesizer (its configured voices speak when a
session names none); ``tts.more_backends`` add their voices (Piper's ``joe``)
to the list users pick from. A call goes to the backend that owns the voice.
A voice whose backend cannot speak the text's language (Piper's English-only
voice given Chinese) is spoken by the primary's configured voice for that
language, logged once per voice and language: as Kokoro does for a user voice
in its other language.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from models.base import Speech, SpeechSynthesizer
from models.tts.common import normalize_lang

log = logging.getLogger(__name__)

ALL_LANGS = ("en", "zh")


def speaks(tts: SpeechSynthesizer, lang: str) -> bool:
    """Whether ``tts`` speaks ``lang`` (backends that speak fewer than both say
    so in a ``langs`` attribute)."""
    return lang in getattr(tts, "langs", ALL_LANGS)


class VoicesRouter(SpeechSynthesizer):
    """The primary synthesizer plus more backends' voices. Blocking and
    thread-safe as the backends it routes to are."""

    def __init__(
        self, primary_name: str, primary: SpeechSynthesizer, more: dict[str, SpeechSynthesizer]
    ) -> None:
        self.primary_name = primary_name
        self.primary = primary
        self.more = dict(more)
        # A voice's owner among the more backends (their voice lists are fixed).
        self._owners: dict[str, str] = {}
        for name, tts in self.more.items():
            for voice in tts.voices():
                self._owners.setdefault(voice, name)
        # What callers may rely on for every call: timings only if every backend
        # gives them; streaming if any backend may yield a piece in chunks (a
        # one-chunk stream is still a stream, the reverse would be a lie).
        self.has_timings = primary.has_timings and all(t.has_timings for t in self.more.values())
        self.streams_audio = primary.streams_audio or any(
            t.streams_audio for t in self.more.values()
        )
        self._fallbacks_logged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    # -- voices
    def voices(self) -> list[str]:
        """The primary's voices (stock, then user voices), then the others'."""
        own = self.primary.voices()
        return [*own, *(v for v in self._owners if v not in own)]

    def backend_of(self, voice: str | None) -> str:
        """The name of the backend that speaks ``voice`` (None: the primary's)."""
        return self._owners.get(voice or "", self.primary_name)

    def backend(self, name: str) -> SpeechSynthesizer:
        return self.primary if name == self.primary_name else self.more[name]

    def describe_voice(self, voice: str) -> dict[str, Any] | None:
        """What a backend says about one of its voices (languages, gender, a
        description), or None."""
        owner = self._owners.get(voice)
        return self.more[owner].describe_voice(voice) if owner else None

    # -- synthesis
    def _route(
        self, text: str, lang: str, voice: str | None
    ) -> tuple[SpeechSynthesizer, str, str | None]:
        lang = normalize_lang(lang, text)
        owner = self._owners.get(voice or "")
        if owner is None:
            return self.primary, lang, voice
        tts = self.more[owner]
        if speaks(tts, lang):
            return tts, lang, voice
        key = (str(voice), lang)
        with self._lock:
            first = key not in self._fallbacks_logged
            self._fallbacks_logged.add(key)
        if first:
            log.info(
                "voice %r (%s) does not speak %s: %s text is spoken by %s's configured voice",
                voice,
                owner,
                lang,
                lang,
                self.primary_name,
            )
        return self.primary, lang, None

    def synthesize(self, text: str, lang: str, voice: str | None = None) -> Speech:
        tts, lang, voice = self._route(text, lang, voice)
        return tts.synthesize(text, lang, voice)

    def stream(self, text: str, lang: str, voice: str | None = None) -> Iterator[Speech]:
        tts, lang, voice = self._route(text, lang, voice)
        chunks = tts.stream(text, lang, voice)
        try:
            yield from chunks
        finally:
            close = getattr(chunks, "close", None)  # a backend may hold a lock until it ends
            if close is not None:
                close()

    def close(self) -> None:
        for tts in (self.primary, *self.more.values()):
            close = getattr(tts, "close", None)
            if close is not None:
                close()


def voice_backend(tts: SpeechSynthesizer, voice: str | None) -> str | None:
    """The other backend (one of ``tts.more_backends``) that speaks ``voice``,
    or None where the primary speaks it (or one backend speaks every voice)."""
    if isinstance(tts, VoicesRouter):
        owner = tts.backend_of(voice)
        return None if owner == tts.primary_name else owner
    return None
