"""User voices as the TTS backends see them: the clip, its transcript, its language.

Reads the layout tools/voice_library.py writes (models/ may not import tools/):
``<weights_dir>/voices/<name>/clip.wav`` (16 kHz mono 16-bit) and
``meta.json`` with at least ``name``, ``lang`` ("en" | "zh") and
``transcript`` (may be empty or null). ``style.npy`` is Kokoro's (read by
models/tts/kokoro.py from the voice's folder).
Looked up on use, so a voice added or removed while the server runs counts at once.
"""

from __future__ import annotations

import json
import logging
import re
import wave
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

VOICES_DIR = "voices"
# The voice store's names (tools/avatar_library.py NAME_RE); anything else is not a voice.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")


@dataclass(frozen=True)
class UserVoice:
    name: str
    clip_path: Path  # absolute
    transcript: str  # "" when the user gave none
    lang: str  # "en" | "zh"
    stamp: tuple[int, int]  # meta.json's (inode, mtime_ns): a voice added again differs
    nearest_stock: str = ""  # the closest stock Kokoro voice found when it was matched

    @property
    def folder(self) -> Path:
        return self.clip_path.parent


def user_voice(weights_dir: str | Path, name: str) -> UserVoice | None:
    """The user voice ``name`` as on disk now, or None if there is none (or it
    is unreadable)."""
    if not _NAME.fullmatch(name):
        return None
    folder = Path(weights_dir).resolve() / VOICES_DIR / name
    clip, meta_path = folder / "clip.wav", folder / "meta.json"
    try:
        st = meta_path.stat()
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not clip.is_file() or not isinstance(meta, dict):
        return None
    lang = str(meta.get("lang") or "")
    if lang not in ("en", "zh"):
        log.warning("user voice %r: lang %r is not en or zh; skipped", name, lang)
        return None
    transcript = str(meta.get("transcript") or "").strip()
    nearest = str(meta.get("nearest_stock") or "")
    return UserVoice(name, clip, transcript, lang, (st.st_ino, st.st_mtime_ns), nearest)


def user_voice_names(weights_dir: str | Path) -> list[str]:
    """The names of the user voices on disk now, sorted."""
    root = Path(weights_dir) / VOICES_DIR
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if _NAME.fullmatch(p.name) and (p / "clip.wav").is_file() and (p / "meta.json").is_file()
    )


def clip_seconds(path: str | Path) -> float:
    """The length of a WAV clip, from its header."""
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / float(wav.getframerate())
