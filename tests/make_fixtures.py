"""Regenerate the spoken-question fixtures in tests/fixtures/ with Kokoro.

    python tests/make_fixtures.py [--weights weights]

Voices differ from the configured defaults (af_heart, zf_xiaoxiao), so ASR
tests do not only hear the avatar's own voice. Output: 16 kHz mono int16 WAV,
0.3 s of silence before the speech and 1.0 s after (enough for a VAD
hang-over to end the turn).
"""

from __future__ import annotations

import argparse
import sys
import wave
from math import gcd
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from models.tts.kokoro import KOKORO_MODEL_FILE, KOKORO_VOICES_FILE, KokoroSynthesizer  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLE_RATE = 16_000
LEAD_S, TAIL_S = 0.3, 1.0

QUESTIONS = {
    "question_en.wav": ("What is the capital of France?", "en", "am_michael"),
    "question_zh.wav": ("今天天气怎么样？", "zh", "zm_yunxi"),
}
# Short replies that are also Whisper's stock hallucinations on silence: the
# ASR must keep them when they are really said.
PHRASES = {
    "thank_you_en.wav": ("Thank you.", "en", "am_michael"),
    "thank_you_zh.wav": ("谢谢。", "zh", "zm_yunxi"),
}


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    from scipy.signal import resample_poly  # scipy comes with scikit-image

    g = gcd(src_rate, dst_rate)
    return resample_poly(audio, dst_rate // g, src_rate // g).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """16-bit mono WAV -> float32 in [-1, 1] and its rate."""
    with wave.open(str(path), "rb") as wav:
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1, path
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return pcm.astype(np.float32) / 32768.0, wav.getframerate()


def spoken(tts: KokoroSynthesizer, text: str, lang: str, voice: str) -> np.ndarray:
    """``text`` spoken at 16 kHz, peak 0.7, LEAD_S of silence before, TAIL_S after."""
    speech = tts.synthesize(text, lang, voice=voice)
    audio = resample(speech.audio, speech.sample_rate, SAMPLE_RATE)
    audio *= 0.7 / max(float(np.abs(audio).max()), 1e-6)
    lead = np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32)
    tail = np.zeros(int(TAIL_S * SAMPLE_RATE), np.float32)
    return np.concatenate([lead, audio, tail])


def make_phrase_fixtures(tts: KokoroSynthesizer) -> None:
    """tests/fixtures/thank_you_{en,zh}.wav (PHRASES)."""
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, (text, lang, voice) in PHRASES.items():
        audio = spoken(tts, text, lang, voice)
        path = FIXTURES / name
        write_wav(path, audio)
        print(f"{path.relative_to(REPO_ROOT)}: {len(audio) / SAMPLE_RATE:.2f} s, {voice}, {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "weights")
    args = parser.parse_args(argv)

    tts = KokoroSynthesizer(
        args.weights / "kokoro" / KOKORO_MODEL_FILE,
        args.weights / "kokoro" / KOKORO_VOICES_FILE,
        warmup=False,
    )
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, (text, lang, voice) in QUESTIONS.items():
        speech = tts.synthesize(text, lang, voice=voice)
        audio = resample(speech.audio, speech.sample_rate, SAMPLE_RATE)
        audio *= 0.7 / max(float(np.abs(audio).max()), 1e-6)  # same level for both
        audio = np.concatenate(
            [
                np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32),
                audio,
                np.zeros(int(TAIL_S * SAMPLE_RATE), np.float32),
            ]
        )
        path = FIXTURES / name
        write_wav(path, audio)
        print(f"{path.relative_to(REPO_ROOT)}: {len(audio) / SAMPLE_RATE:.2f} s, {voice}, {text}")
    make_phrase_fixtures(tts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
