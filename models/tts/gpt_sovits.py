"""TTS backend ``gpt-sovits``: a GPT-SoVITS server (its own ``api_v2.py``,
started by you, usually on a GPU) cloning the user voices
(``weights/voices/<name>/``, models/tts/user_voices.py) over HTTP.

Written against upstream RVC-Boss/GPT-SoVITS at ``48b1a01`` (``api_v2.py``,
``GPT_SoVITS/TTS_infer_pack/TTS.py``):

* ``POST /tts`` with a JSON ``TTS_Request``; the reference clip is a *path on
  the server's machine* (there is no upload endpoint), so the server must see
  the voice store: the same host, or a shared folder named by
  ``tts.voice_dir_on_server``;
* streaming with ``media_type: wav`` answers a WAV header (mono, 16-bit, the
  model's rate, no length) and then raw int16 PCM, decoded here as it arrives;
* a clip outside 3-10 s makes it raise, so such clips are refused before the call;
* a failure inside its synthesis is swallowed and answered with 1 s of silence
  at 16 kHz (no model of it runs at 16 kHz), which is taken as the failure it is;
* parameter errors are HTTP 400 with ``{"message": ...}``.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from core.config import Config, TTSConfig
from models.backends import backend
from models.base import BackendNeeds, BackendUnavailable, Speech, SpeechSynthesizer
from models.tts.common import normalize_lang
from models.tts.user_voices import UserVoice, clip_seconds, user_voice, user_voice_names

log = logging.getLogger(__name__)

MIN_REF_S, MAX_REF_S = 3.0, 10.0  # upstream raises outside this (TTS._set_prompt_semantic)
FAILURE_RATE = 16_000  # the rate of upstream's "1 s of silence" failure answer


class WavStreamParser:
    """A streamed WAV (header, then int16 PCM of unknown length) fed in pieces of
    any size, to mono float32."""

    def __init__(self) -> None:
        self._head = b""
        self.sample_rate: int | None = None  # known once the header is complete
        self._odd = b""  # half a sample left over from the last piece

    def feed(self, data: bytes) -> np.ndarray:
        if self.sample_rate is None:
            self._head += data
            data = self._parse_header()
            if self.sample_rate is None:
                return np.zeros(0, np.float32)
        data = self._odd + data
        whole = len(data) // 2 * 2
        self._odd = data[whole:]
        return np.frombuffer(data[:whole], dtype="<i2").astype(np.float32) / 32768.0

    def _parse_header(self) -> bytes:
        """The bytes after the header once it is complete (``sample_rate`` set)."""
        head = self._head
        if len(head) < 12:
            return b""
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise RuntimeError("GPT-SoVITS answered something that is not WAV")
        pos, rate = 12, None
        while len(head) >= pos + 8:
            chunk, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
            if chunk == b"data":
                if rate is None:
                    raise RuntimeError("GPT-SoVITS' WAV has no fmt chunk before its data")
                self.sample_rate, self._head = rate, b""
                return head[pos + 8 :]
            if len(head) < pos + 8 + size:
                return b""
            if chunk == b"fmt ":
                fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", head[pos + 8 : pos + 24])
                if fmt != 1 or channels != 1 or bits != 16:
                    raise RuntimeError(
                        f"GPT-SoVITS sent {channels}-channel {bits}-bit audio (format {fmt}); "
                        "expected mono 16-bit PCM"
                    )
            pos += 8 + size + (size & 1)
        return b""


@backend("tts", "gpt-sovits")
class GPTSoVITSSynthesizer(SpeechSynthesizer):
    """Zero-shot cloning of the user voices by a GPT-SoVITS ``api_v2.py`` server."""

    streams_audio = True
    STREAMING_MODE = 2  # upstream's token streaming (v3/v4 models fall back to fragments)
    CONNECT_TIMEOUT_S = 5.0
    READ_TIMEOUT_S = 30.0  # the wait for the next piece (its first includes model warm-up)
    SENTENCE_TIMEOUT_S = 120.0

    def __init__(
        self,
        base_url: str,
        weights_dir: str | Path,
        *,
        voice_dir_on_server: str = "",
        voice_en: str | None = None,
        voice_zh: str | None = None,
        speed: float = 1.0,
        check_server: bool = True,
    ) -> None:
        try:
            import httpx
        except ImportError as exc:  # a main dependency; only a broken install lacks it
            raise BackendUnavailable(f"TTS backend 'gpt-sovits' needs httpx ({exc})") from exc
        self.base_url = base_url.rstrip("/")
        self.weights_dir = Path(weights_dir)
        self.voice_dir_on_server = voice_dir_on_server
        self.speed = speed
        # One client, so one connection pool, for every sentence.
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(self.READ_TIMEOUT_S, connect=self.CONNECT_TIMEOUT_S),
        )
        if check_server:
            try:  # any HTTP answer will do: api_v2.py has no health endpoint
                self._client.get("/docs", timeout=self.CONNECT_TIMEOUT_S)
            except httpx.HTTPError as exc:
                self._client.close()
                raise BackendUnavailable(self._unreachable(exc)) from exc
        available = self.voices()
        if not available:
            self._client.close()
            raise BackendUnavailable(
                "TTS backend 'gpt-sovits' clones user voices and there is none with a "
                f"{MIN_REF_S:.0f}-{MAX_REF_S:.0f} s clip: add one with "
                "`videochat voice add NAME --audio CLIP --text 'what the clip says'`"
            )
        self.voice_en = voice_en if voice_en in available else None
        self.voice_zh = voice_zh if voice_zh in available else None

    @classmethod
    def needs(cls, config: Config) -> BackendNeeds:
        """What ``videochat doctor`` checks: the server it talks to."""
        return BackendNeeds(
            external=f"a GPT-SoVITS api_v2.py server at tts.base_url ({config.tts.base_url})"
        )

    @classmethod
    def from_config(cls, config: TTSConfig, weights_dir: Path) -> GPTSoVITSSynthesizer:
        return cls(
            config.base_url,
            weights_dir,
            voice_dir_on_server=config.voice_dir_on_server,
            voice_en=config.voice_en,
            voice_zh=config.voice_zh,
            speed=config.speed,
        )

    def _unreachable(self, exc: Exception) -> str:
        return (
            f"TTS backend 'gpt-sovits': no GPT-SoVITS server at {self.base_url} ({exc}); "
            "start it in its checkout with `python api_v2.py -a 127.0.0.1 -p 9880 "
            "-c GPT_SoVITS/configs/tts_infer.yaml` or set tts.base_url"
        )

    def close(self) -> None:
        self._client.close()

    # -- voices
    def _usable(self, voice: UserVoice) -> bool:
        try:
            return MIN_REF_S <= clip_seconds(voice.clip_path) <= MAX_REF_S
        except (OSError, EOFError, ValueError):
            return False

    def _user_voices(self) -> list[UserVoice]:
        found = (user_voice(self.weights_dir, n) for n in user_voice_names(self.weights_dir))
        return [v for v in found if v is not None and self._usable(v)]

    def voices(self) -> list[str]:
        return [v.name for v in self._user_voices()]

    def _resolve(self, voice: str | None, lang: str) -> UserVoice:
        voice = voice or (self.voice_zh if lang == "zh" else self.voice_en)
        if voice is None:  # none configured: one of this language, else any
            users = self._user_voices()
            if not users:
                raise ValueError("no user voice for GPT-SoVITS: add one with `videochat voice add`")
            return next((u for u in users if u.lang == lang), users[0])
        user = user_voice(self.weights_dir, voice)
        if user is None:
            raise ValueError(
                f"unknown GPT-SoVITS voice {voice!r}; available: {', '.join(self.voices())}"
            )
        seconds = clip_seconds(user.clip_path)
        if not MIN_REF_S <= seconds <= MAX_REF_S:
            raise ValueError(
                f"user voice {voice!r}: its clip is {seconds:.1f} s and GPT-SoVITS takes "
                f"{MIN_REF_S:.0f}-{MAX_REF_S:.0f} s: add it again with a clip of that length"
            )
        return user

    def server_path(self, voice: UserVoice) -> str:
        """Where the GPT-SoVITS process reads the voice's clip."""
        if self.voice_dir_on_server:
            return str(PurePosixPath(self.voice_dir_on_server) / voice.name / voice.clip_path.name)
        return str(voice.clip_path.resolve())

    # -- synthesis
    def request(self, text: str, lang: str, voice: UserVoice) -> dict[str, Any]:
        """The ``TTS_Request`` body (field names as in upstream api_v2.py)."""
        return {
            "text": text,
            "text_lang": lang,
            "ref_audio_path": self.server_path(voice),
            "prompt_text": voice.transcript,  # "": upstream's reference-only mode
            "prompt_lang": voice.lang,
            "speed_factor": self.speed,
            "media_type": "wav",
            "streaming_mode": self.STREAMING_MODE,
        }

    def stream(self, text: str, lang: str, voice: str | None = None) -> Iterator[Speech]:
        import httpx

        lang = normalize_lang(lang, text)
        user = self._resolve(voice, lang)
        if not text.strip():
            return
        body = self.request(text, lang, user)
        deadline = time.monotonic() + self.SENTENCE_TIMEOUT_S
        parser = WavStreamParser()
        # A 16 kHz answer is held while it may still be upstream's failure silence.
        held: list[np.ndarray] = []
        holding = True
        try:
            with self._client.stream("POST", "/tts", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise RuntimeError(
                        f"GPT-SoVITS refused ({response.status_code}): {_message(response)}"
                    )
                for data in response.iter_bytes():
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"GPT-SoVITS took over {self.SENTENCE_TIMEOUT_S:.0f} s "
                            f"for {text[:40]!r}"
                        )
                    audio = parser.feed(data)
                    if not audio.size:
                        continue
                    if holding and parser.sample_rate == FAILURE_RATE:
                        held.append(audio)
                        total = sum(a.size for a in held)
                        if total <= FAILURE_RATE and not any(a.any() for a in held):
                            continue
                        audio, held = np.concatenate(held), []
                    holding = False
                    yield Speech(audio, int(parser.sample_rate or 0))
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"GPT-SoVITS sent nothing for a while ({exc})") from exc
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise BackendUnavailable(self._unreachable(exc)) from exc
        except httpx.HTTPError as exc:  # the stream broke off: upstream's error mid-synthesis
            raise RuntimeError(f"GPT-SoVITS stopped mid-answer ({exc}); see its log") from exc
        if parser.sample_rate is None:
            raise RuntimeError("GPT-SoVITS answered without audio; see its log")
        if held:
            raise RuntimeError(
                "GPT-SoVITS failed inside its synthesis (it answered its 1 s of silence); "
                "see its log"
            )

    def synthesize(self, text: str, lang: str, voice: str | None = None) -> Speech:
        chunks = list(self.stream(text, lang, voice))
        rate = chunks[0].sample_rate if chunks else FAILURE_RATE
        audio = np.concatenate([c.audio for c in chunks]) if chunks else np.zeros(0, np.float32)
        return Speech(audio, rate)


def _message(response: Any) -> str:
    """The server's JSON ``message`` (api_v2.py's error body), else its text."""
    try:
        body = response.json()
    except ValueError:
        return str(response.text)[:300]
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])
    return str(body)[:300]
