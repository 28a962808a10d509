"""TTS backend ``cosyvoice``: CosyVoice 2 or 3 (0.5B; torch, practical only on
a GPU), installed from its repository (docs/backends.md), weights in
``weights/cosyvoice/<folder>``. Its voices are the model's SFT speakers plus
the user voices (``weights/voices/<name>/``, models/tts/user_voices.py), each
cloned zero-shot from its clip and transcript.

Written against upstream FunAudioLLM/CosyVoice at ``ace7c47``
(``cosyvoice/cli/cosyvoice.py``, ``cosyvoice/cli/model.py``):

* the constructors download from ModelScope when ``model_dir`` does not exist,
  so a missing folder is refused here, naming what to download;
* ``inference_zero_shot`` takes the prompt as a file path; a user voice is
  registered once per process with ``add_zero_shot_spk`` and then named by its
  id (never ``save_spkinfo``: that writes into the model folder);
* ``speed`` is never passed: the streaming path ignores it (``token2wav``
  asserts it is 1 in streaming mode);
* the model's ``token_hop_len`` doubles after every streamed chunk and is
  never reset, so it is set back before each call, or every sentence after the
  first would wait for ~4 s of audio before its first chunk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.config import Config, TTSConfig
from models.backends import backend
from models.base import (
    BackendNeeds,
    BackendUnavailable,
    PackageNeed,
    Speech,
    SpeechSynthesizer,
    WeightNeed,
)
from models.needs import MB, TORCH
from models.tts.common import normalize_lang
from models.tts.user_voices import UserVoice, clip_seconds, user_voice, user_voice_names

log = logging.getLogger(__name__)

COSYVOICE_ROOT = Path("cosyvoice")
# Looked for in this order under weights/cosyvoice/; any other folder with a
# cosyvoice2.yaml or cosyvoice3.yaml is taken after these.
MODEL_FOLDERS = ("Fun-CosyVoice3-0.5B-2512", "CosyVoice2-0.5B")
# CosyVoice 3 is prompted like a chat model: its prompt text starts with this
# (upstream example.py); CosyVoice 2 takes the bare transcript.
COSYVOICE3_PREFIX = "You are a helpful assistant.<|endofprompt|>"
# Our ids in the model's speaker table, apart from its own SFT speakers.
_USER_ID_PREFIX = "videochat-user:"
MAX_PROMPT_S = 30.0  # upstream asserts the prompt is at most 30 s


def model_version(model_dir: Path) -> int | None:
    """3 or 2 by the config the folder holds (what upstream's AutoModel looks at)."""
    if (model_dir / "cosyvoice3.yaml").is_file():
        return 3
    if (model_dir / "cosyvoice2.yaml").is_file():
        return 2
    return None


def find_model_dir(weights_dir: Path) -> Path:
    """The CosyVoice model folder under ``weights_dir/cosyvoice`` (the
    CosyVoice 2 one, missing, when there is none)."""
    root = weights_dir / COSYVOICE_ROOT
    candidates = [root / name for name in MODEL_FOLDERS]
    if root.is_dir():
        candidates += sorted(p for p in root.iterdir() if p.name not in MODEL_FOLDERS)
    for folder in candidates:
        if folder.is_dir() and model_version(folder) is not None:
            return folder
    return root / MODEL_FOLDERS[1]


@backend("tts", "cosyvoice")
class CosyVoiceSynthesizer(SpeechSynthesizer):
    """CosyVoice 2/3: ``inference_sft`` for its own speakers,
    ``inference_zero_shot`` for user voices that have a transcript."""

    streams_audio = True

    def __init__(
        self,
        model_dir: str | Path,
        *,
        weights_dir: str | Path | None = None,
        voice_en: str | None = None,
        voice_zh: str | None = None,
        speed: float = 1.0,
        fp16: bool = False,
    ) -> None:
        model_dir = Path(model_dir)
        version = model_version(model_dir) if model_dir.is_dir() else None
        problems = []
        try:
            import torch  # noqa: F401
            from cosyvoice.cli import cosyvoice as upstream
        except ImportError as exc:
            problems.append(
                f"CosyVoice and torch are not importable ({exc}): clone "
                "https://github.com/FunAudioLLM/CosyVoice with --recursive, "
                "`pip install -r requirements.txt` in it, and put it and its "
                "third_party/Matcha-TTS on PYTHONPATH (the PyPI package named "
                "'cosyvoice' is unrelated: `pip uninstall cosyvoice` if it is installed)"
            )
        if version is None:
            # Upstream would download into a missing folder: refuse instead.
            problems.append(
                f"no CosyVoice 2 or 3 weights in {model_dir}: download "
                "FunAudioLLM/CosyVoice2-0.5B into weights/cosyvoice/CosyVoice2-0.5B "
                "or FunAudioLLM/Fun-CosyVoice3-0.5B-2512 into "
                "weights/cosyvoice/Fun-CosyVoice3-0.5B-2512"
            )
        if problems:
            raise BackendUnavailable("TTS backend 'cosyvoice': " + "; ".join(problems))

        self.version = version
        self._model: Any
        if version == 3:
            if not hasattr(upstream, "CosyVoice3"):
                raise BackendUnavailable(
                    "TTS backend 'cosyvoice': this CosyVoice checkout has no CosyVoice3; "
                    "update it (git pull, then `git submodule update --init`)"
                )
            # CosyVoice3 takes no load_jit (passing it is a TypeError upstream).
            self._model = upstream.CosyVoice3(str(model_dir), load_trt=False, fp16=fp16)
        else:
            self._model = upstream.CosyVoice2(
                str(model_dir), load_jit=False, load_trt=False, fp16=fp16
            )
        self.sample_rate = int(self._model.sample_rate)
        self.weights_dir = Path(weights_dir) if weights_dir is not None else None
        # Taken before any user voice is registered: those share the same table.
        self._speakers = [str(s) for s in self._model.list_available_spks()]
        self._hop_len: int | None = getattr(self._model.model, "token_hop_len", None)
        self._registered: dict[str, tuple[int, int]] = {}  # user voice -> its meta.json stamp
        # One synthesis at a time: the model's hop length and speaker table are shared.
        self._lock = threading.Lock()
        if speed != 1.0:
            log.warning("cosyvoice streams its audio: tts.speed %.2f is not applied", speed)
        available = self.voices()
        if not available:
            raise BackendUnavailable(
                f"TTS backend 'cosyvoice': {model_dir.name} has no built-in speakers and "
                "there is no user voice with a transcript: add one with "
                "`videochat voice add NAME --audio CLIP --text 'what the clip says'`"
            )
        self.voice_en = voice_en if voice_en in available else None
        self.voice_zh = voice_zh if voice_zh in available else None

    @classmethod
    def needs(cls, config: Config) -> BackendNeeds:
        """What ``videochat doctor`` checks."""
        # The backend takes version 3 when its folder is there, else version 2.
        v3 = "Fun-CosyVoice3-0.5B-2512"
        name = v3 if (config.weights_path / "cosyvoice" / v3).is_dir() else "CosyVoice2-0.5B"
        return BackendNeeds(
            packages=(
                TORCH,
                PackageNeed(
                    "cosyvoice",
                    "a CosyVoice checkout on PYTHONPATH (docs/backends.md, 'CosyVoice from "
                    "source'); not the unrelated PyPI package 'cosyvoice'",
                ),
            ),
            weights=(
                WeightNeed(
                    f"cosyvoice/{name}/",
                    1500 * MB,
                    f"modelscope download --model iic/{name} --local_dir weights/cosyvoice/{name}",
                ),
            ),
            cuda=True,
            gpu_memory_gb=4.0,
        )

    @classmethod
    def from_config(cls, config: TTSConfig, weights_dir: Path) -> CosyVoiceSynthesizer:
        return cls(
            find_model_dir(weights_dir),
            weights_dir=weights_dir,
            voice_en=config.voice_en,
            voice_zh=config.voice_zh,
            speed=config.speed,
        )

    # -- voices
    def _user_voices(self) -> list[UserVoice]:
        if self.weights_dir is None:
            return []
        found = (user_voice(self.weights_dir, n) for n in user_voice_names(self.weights_dir))
        # Zero-shot needs the words of the prompt: voices without them are not offered.
        return [v for v in found if v is not None and v.transcript]

    def voices(self) -> list[str]:
        return self._speakers + [v.name for v in self._user_voices()]

    def _resolve(self, voice: str | None, lang: str) -> str | UserVoice:
        """An SFT speaker's name or the user voice to clone."""
        voice = voice or (self.voice_zh if lang == "zh" else self.voice_en)
        if voice is None:  # nothing configured that exists here: a speaker, else a user voice
            if self._speakers:
                return self._speakers[0]
            users = self._user_voices()
            if not users:
                raise ValueError("no CosyVoice voice: add a user voice with a transcript")
            return next((u for u in users if u.lang == lang), users[0])
        if voice in self._speakers:
            return voice
        user = user_voice(self.weights_dir, voice) if self.weights_dir is not None else None
        if user is None:
            raise ValueError(
                f"unknown CosyVoice voice {voice!r}; available: {', '.join(self.voices())}"
            )
        if not user.transcript:
            raise ValueError(
                f"user voice {voice!r} has no transcript, which CosyVoice's zero-shot "
                "cloning needs: add it again with --text 'what the clip says'"
            )
        return user

    def _prompt_text(self, user: UserVoice) -> str:
        return (COSYVOICE3_PREFIX if self.version == 3 else "") + user.transcript

    def _register(self, user: UserVoice) -> str:
        """The user voice's id in the model's speaker table, added on first use
        (and again when the voice was replaced). Call under the lock."""
        spk_id = _USER_ID_PREFIX + user.name
        if self._registered.get(user.name) != user.stamp:
            seconds = clip_seconds(user.clip_path)
            if seconds > MAX_PROMPT_S:
                raise ValueError(
                    f"user voice {user.name!r}: its clip is {seconds:.1f} s, CosyVoice "
                    f"takes at most {MAX_PROMPT_S:.0f} s"
                )
            self._model.add_zero_shot_spk(self._prompt_text(user), str(user.clip_path), spk_id)
            self._registered[user.name] = user.stamp
        return spk_id

    # -- synthesis
    def stream(self, text: str, lang: str, voice: str | None = None) -> Iterator[Speech]:
        lang = normalize_lang(lang, text)
        target = self._resolve(voice, lang)
        if not text.strip():  # nothing to say: no call (as Kokoro and edge-tts)
            return
        with self._lock:
            if self._hop_len is not None:
                self._model.model.token_hop_len = self._hop_len
            if isinstance(target, UserVoice):
                outputs = self._model.inference_zero_shot(
                    text,
                    self._prompt_text(target),
                    str(target.clip_path),
                    zero_shot_spk_id=self._register(target),
                    stream=True,
                )
            else:
                outputs = self._model.inference_sft(text, target, stream=True)
            for out in outputs:
                audio = out["tts_speech"].squeeze(0).float().cpu().numpy()
                yield Speech(np.asarray(audio, dtype=np.float32).reshape(-1), self.sample_rate)

    def synthesize(self, text: str, lang: str, voice: str | None = None) -> Speech:
        chunks = [speech.audio for speech in self.stream(text, lang, voice)]
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        return Speech(audio, self.sample_rate)
