"""Speaker encoders (models/speaker/) and offline voice matching (tools/voice_match.py)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from models.speaker import SpeakerEncoder, l2_normalize
from models.speaker.features import hz_to_mel, mel_filterbank, mel_to_hz, power_mel
from models.speaker.speaker_count import MIN_SECOND_S, split_speakers, voiced
from models.speaker.torch_legacy import MAGIC, load_legacy

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "weights"
HAVE_KOKORO = (WEIGHTS / "kokoro" / "voices.npz").is_file()
HAVE_SPEAKER = (WEIGHTS / "speaker" / "voicefilter_embedder.int8.onnx").is_file() and (
    WEIGHTS / "speaker" / "resemblyzer_pretrained.pt"
).is_file()
needs_models = pytest.mark.skipif(
    not (HAVE_KOKORO and HAVE_SPEAKER), reason="weights missing: run `videochat weights`"
)


# ------------------------------------------------------ the torch-free reader
def _legacy_file(tmp_path: Path, payload: bytes) -> Path:
    buf = io.BytesIO()
    for header in (MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    buf.write(payload)
    pickle.dump([], buf, protocol=2)
    path = tmp_path / "model.pt"
    path.write_bytes(buf.getvalue())
    return path


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("echo should never run",))


def test_reader_refuses_other_globals(tmp_path: Path) -> None:
    path = _legacy_file(tmp_path, pickle.dumps({"model_state": _Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        load_legacy(path)


def test_reader_refuses_globals_in_headers(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        load_legacy(path)


def test_reader_plain_objects(tmp_path: Path) -> None:
    path = _legacy_file(tmp_path, pickle.dumps({"step": 3, "name": "x"}, protocol=2))
    assert load_legacy(path) == {"step": 3, "name": "x"}


@pytest.mark.skipif(not HAVE_SPEAKER, reason="weights missing: run `videochat weights`")
def test_reader_real_checkpoint() -> None:
    state = load_legacy(WEIGHTS / "speaker" / "resemblyzer_pretrained.pt")["model_state"]
    assert state["lstm.weight_ih_l0"].shape == (1024, 40)
    assert state["lstm.weight_hh_l2"].shape == (1024, 256)
    assert state["linear.weight"].shape == (256, 256)
    # Views into one flat storage at different offsets: they must differ.
    assert not np.allclose(state["lstm.weight_hh_l0"], state["lstm.weight_ih_l1"])


# ------------------------------------------------------------ mel front end
def test_slaney_scale_known_points() -> None:
    assert float(hz_to_mel(1000.0)) == pytest.approx(15.0)  # linear part: 200/3 Hz per mel
    assert float(hz_to_mel(200.0)) == pytest.approx(3.0)
    assert float(mel_to_hz(hz_to_mel(4321.0))) == pytest.approx(4321.0)


def test_sine_energy_in_its_band() -> None:
    sr, f0 = 16_000, 1000.0
    t = np.arange(sr) / sr
    sine = (0.5 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)
    mel = power_mel(sine, n_fft=400, hop=160, win_length=400, window="hann", n_mels=40, center=True)
    assert mel.shape == (101, 40)
    energy = mel[5:-5].mean(axis=0)
    bank = mel_filterbank(sr, 400, 40)
    peaks = np.fft.rfftfreq(400, 1 / sr)[np.argmax(bank, axis=1)]
    top = np.argsort(energy)[-2:]
    assert np.all(np.abs(peaks[top] - f0) < 200)  # the two filters around 1 kHz
    assert energy[top].sum() > 0.95 * energy.sum()


# ------------------------------------------------------ one speaker or two
class SignEncoder(SpeakerEncoder):
    """A stand-in encoder: a window's "voice" is the sign of its mean sample
    (one of two orthogonal directions), plus a little noise."""

    name = "sign"

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def embed(self, audio_16k: np.ndarray) -> np.ndarray:
        v = 0.2 * self.rng.standard_normal(16)
        v[0 if float(np.mean(audio_16k)) > 0 else 1] += 1.0
        return l2_normalize(v)


def _turns(*turns: tuple[float, float]) -> np.ndarray:
    """Speech as (seconds, level) turns: the level's sign stands for the speaker."""
    return np.concatenate([np.full(int(s * 16_000), lvl, np.float32) for s, lvl in turns])


def test_two_speakers_split() -> None:
    enc = SignEncoder()
    split = split_speakers(enc, _turns((6.0, 0.1), (4.0, -0.1)))
    assert split.two_speakers and split.similarity < 0.3
    assert 0.3 < split.minor_share < 0.5 and 3.0 < split.minor_seconds < 5.0
    # Taking turns, the second speaker in the middle.
    assert split_speakers(enc, _turns((4.0, 0.1), (4.0, -0.1), (4.0, 0.1))).two_speakers


def test_one_speaker_or_a_cough_is_not_two() -> None:
    enc = SignEncoder()
    one = split_speakers(enc, _turns((10.0, 0.1)))
    assert not one.two_speakers and one.similarity > 0.8
    cough = split_speakers(enc, _turns((9.0, 0.1), (1.0, -0.1)))
    assert not cough.two_speakers and cough.minor_seconds < MIN_SECOND_S
    assert split_speakers(enc, _turns((1.5, 0.1), (1.0, -0.1))).windows < 3  # too short to tell
    assert not split_speakers(enc, _turns((1.5, 0.1), (1.0, -0.1))).two_speakers


def test_voiced_joins_the_speech_frames() -> None:
    audio = np.arange(10 * 4, dtype=np.float32)
    flags = np.array([0, 1, 1, 0, 0, 1, 0, 0, 0, 0], bool)
    assert voiced(audio, flags, 4).tolist() == [*range(4, 12), *range(20, 24)]


def test_the_one_speaker_figures_survive_a_new_eval() -> None:
    """docs/benchmarks.md: `--speakers` writes its sub-section into "Voice
    matching"; a later `videochat eval voices` rewrites the section but keeps it."""
    from evals.voices import SECTION, keep_speakers_section, splice_speakers

    doc = f"# B\n\n{SECTION}\n\nold figures\n\n## Next\n\nmore\n"
    once = splice_speakers(doc, "### One speaker per clip\n\nv1\n")
    assert once.index("old figures") < once.index("v1") < once.index("## Next")
    twice = splice_speakers(once, "### One speaker per clip\n\nv2\n")
    assert "v1" not in twice and twice.count("### One speaker") == 1 and "## Next" in twice
    assert "v2\n\n## Next" in twice  # the next section keeps its blank line
    rerun = keep_speakers_section(twice, f"{SECTION}\n\nnew figures\n")
    assert "new figures" in rerun and "v2" in rerun and "old figures" not in rerun


# ------------------------------------------------- encoders and the matcher
@pytest.fixture(scope="module")
def voice():
    from tools.voice_match import shared_voice

    return shared_voice(WEIGHTS)


@needs_models
@pytest.mark.parametrize("encoder", ["voicefilter", "resemblyzer"])
def test_encoder_same_voice_closer(voice, encoder: str) -> None:
    texts = ("Please call Stella and ask her to bring these things.", "I will see you tomorrow.")
    names = ("af_heart", "am_adam", "bf_emma")
    enc = voice.encoder(encoder)
    emb = {
        (n, i): enc.embed(voice.speak_stock(n, t, "en")) for n in names for i, t in enumerate(texts)
    }
    for v in emb.values():
        assert v.dtype == np.float32 and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-4)
    for n in names:
        same = float(emb[(n, 0)] @ emb[(n, 1)])
        for other in names:
            if other != n:
                assert same > float(emb[(n, 0)] @ emb[(other, 1)])


@needs_models
def test_match_held_out_voice(voice) -> None:
    from tools.voice_match import match_voice

    clip = voice.speak_stock("zm_yunjian", "这个周末我打算在家里看书。", "zh")
    seen: list[float] = []
    result = match_voice(
        clip, "zh", WEIGHTS, lambda f, m: seen.append(f), budget_s=6.0, exclude=["zm_yunjian"]
    )
    assert result.lang == "zh"
    assert result.nearest_stock.startswith("z") and result.nearest_stock != "zm_yunjian"
    assert result.similarity >= result.nearest_similarity
    assert result.style.shape == (510, 1, 256) and result.style.dtype == np.float32
    assert seen and seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)


@needs_models
def test_match_scores_every_scored_sentence(voice) -> None:
    """With two scored sentences, the nearest stock voice's score is the mean
    of its two cached sentence scores, and the search still never ends below it."""
    from models.speaker import DEFAULT_ENCODER
    from tools.voice_match import match_voice, stock_embeddings

    clip = voice.speak_stock("zm_yunjian", "这个周末我打算在家里看书。", "zh")
    result = match_voice(
        clip, "zh", WEIGHTS, lambda f, m: None, budget_s=3.0, exclude=["zm_yunjian"], sentences=2
    )
    names, table = stock_embeddings(WEIGHTS, "zh", DEFAULT_ENCODER, lambda f, m: None)
    embedded = voice.encoder(DEFAULT_ENCODER).embed(clip)
    row = table[names.index(result.nearest_stock)]
    assert result.nearest_similarity == pytest.approx(float(np.mean(row[:2] @ embedded)), abs=1e-5)
    assert result.similarity >= result.nearest_similarity


def test_stock_cache_key_names_the_front_end() -> None:
    """A new front end gives every stock voice a new embedding: the cached
    table must not be reused (and the stale one is dropped: same prefix)."""
    from tools.voice_match import _cache_key

    class Voice:
        def __init__(self, front_end: str) -> None:
            self.front_end = front_end
            self.stock = {"af_x": np.ones((2, 1, 4), np.float32)}

        def encoder(self, name: str) -> SimpleNamespace:
            return SimpleNamespace(front_end=self.front_end)

    old, new = (
        _cache_key(Voice(fe), "voicefilter", "en", ["af_x"])  # type: ignore[arg-type]
        for fe in ("wheel", "voicefilter")
    )
    assert old != new and old.rsplit("_", 1)[0] == new.rsplit("_", 1)[0]


@pytest.mark.skipif(not HAVE_SPEAKER, reason="weights missing: run `videochat weights`")
def test_voicefilter_front_ends() -> None:
    from models.speaker.voicefilter import FRONT_ENDS, VoiceFilterEncoder

    encoders = {fe: VoiceFilterEncoder.load(WEIGHTS / "speaker", 1, fe) for fe in FRONT_ENDS}
    t = np.arange(32_000) / 16_000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)
    # Centred (as librosa's STFT): one frame per hop; the wheel's: only whole windows.
    assert len(encoders["voicefilter"].features(audio)) == 1 + 32_000 // 160
    assert len(encoders["wheel"].features(audio)) == 1 + (32_000 - 512) // 160
    a, b = (e.embed(audio) for e in encoders.values())
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-4)
    assert np.linalg.norm(b) == pytest.approx(1.0, abs=1e-4)
    assert not np.allclose(a, b)
    with pytest.raises(ValueError, match="unknown front end"):
        VoiceFilterEncoder(object(), "nope")


def test_match_rejects_unknown_lang() -> None:
    from tools.voice_match import match_voice

    with pytest.raises(ValueError, match="lang"):
        match_voice(np.zeros(16_000, np.float32), "fr", WEIGHTS, lambda f, m: None)


def test_eval_voices_sentences_argument(capsys: pytest.CaptureFixture[str]) -> None:
    """`videochat eval voices --sentences` takes 1, 2 or a list; anything else is
    refused before any model loads."""
    import argparse

    from evals.voices import add_arguments, run_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for bad in ("3", "0", "one", "1,,2"):
        assert run_args(parser.parse_args(["--sentences", bad, "--no-doc"])) == 2
        assert "--sentences takes" in capsys.readouterr().err


def test_sentences_table_gives_unseen_gain_per_count() -> None:
    from evals.voices import Row, Target, sentences_table
    from tools.voice_match import MatchResult

    def row(name: str, nearest: float, matched: float) -> Row:
        target = Target(name, "en", "test", np.zeros(1, np.float32), "check")
        result = MatchResult(np.zeros((510, 1, 256), np.float32), 0.9, "af_heart", 0.8, "en")
        return Row(target, result, 60.0, 0.5, None, nearest, matched)

    text = sentences_table(
        {1: [row("a", 0.5, 0.6), row("b", 0.5, 0.5)], 2: [row("a", 0.5, 0.55), row("b", 0.5, 0.6)]},
        60.0,
    )
    assert "| a | +0.100 | +0.050 |" in text
    assert "| b | +0.000 | +0.100 |" in text
    assert "| mean | +0.050 | +0.075 |" in text
