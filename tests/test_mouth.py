"""Phoneme timings (models/phonemes.py), the mouth-shape track (models/avatar/mouth.py)
and lips closing in rendered frames."""

from __future__ import annotations

import numpy as np

from models import phonemes
from models.avatar import mouth
from models.avatar.assets import ASTRONAUT_META, AvatarAssets, astronaut_image
from models.avatar.photo import PhotoAvatarStream
from models.base import MEDIA_SAMPLE_RATE, Speech

SR = 24_000


def _tone(seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * 220 * t) * (1 + 0.3 * np.sin(2 * np.pi * 900 * t))).astype(
        np.float32
    )


def _mama() -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """'mama': quiet (m) - loud (a) - quiet (m) - loud (a), 0.1 s each, in silence."""
    sil = np.zeros(int(0.2 * SR), np.float32)
    audio = np.concatenate([sil, _tone(0.1, 0.03), _tone(0.15), _tone(0.1, 0.03), _tone(0.15), sil])
    timings = [("m", 0.2, 0.3), ("a", 0.3, 0.45), ("m", 0.45, 0.55), ("a", 0.55, 0.7)]
    return audio, timings


def test_parse_phonemes():
    assert phonemes.parse_phonemes("mˈɑːm, hi") == ["m", "ɑ", "ɑ", "m", ".", "h", "i"]
    assert phonemes.parse_phonemes("ma→ma→") == ["m", "a", "m", "a"]


def test_every_phoneme_class_has_a_mouth_shape():
    assert set(mouth._SHAPES) == set(phonemes.PHONEME_CLASSES)
    assert phonemes.phoneme_class("m") == "bilabial" and phonemes.phoneme_class("ˈ") is None


def test_silence_is_closed_and_still():
    track = mouth.mouth_track(np.zeros(SR, np.float32), SR)
    assert track.shape == (mouth.TRACK_RATE, 4)
    assert np.all(track[:, 0] < 0.01)  # no opening
    assert np.all(track[:, 3] > 0.9)  # lips together


def test_mama_closes_twice():
    audio, timings = _mama()
    track = mouth.mouth_track(audio, SR, timings)
    closed = mouth.closed_frames(track)
    t = np.arange(track.shape[0]) / mouth.TRACK_RATE
    speech = (t > 0.22) & (t < 0.62)
    # two closed runs inside the word, separated by open vowels
    runs = np.flatnonzero(np.diff(closed[speech].astype(int)) == 1)
    assert len(runs) + int(closed[speech][0]) == 2
    assert track[(t > 0.33) & (t < 0.42), 0].max() > 0.3  # the first "a" opens
    assert track[(t > 0.58) & (t < 0.66), 0].max() > 0.3


def test_louder_vowel_opens_wider():
    """The same vowel, loud then 10 dB quieter: the loud one opens the mouth wider."""
    sil = np.zeros(int(0.2 * SR), np.float32)
    audio = np.concatenate([sil, _tone(0.2, 0.3), _tone(0.1, 0.02), _tone(0.2, 0.095), sil])
    timings = [("a", 0.2, 0.4), ("t", 0.4, 0.5), ("a", 0.5, 0.7)]
    track = mouth.mouth_track(audio, SR, timings)
    t = np.arange(track.shape[0]) / mouth.TRACK_RATE
    loud = track[(t > 0.25) & (t < 0.35), 0].max()
    quiet = track[(t > 0.55) & (t < 0.65), 0].max()
    assert loud > 0.6
    assert 0.05 < quiet < 0.8 * loud, (loud, quiet)


def test_quiet_stretch_brings_the_lips_together():
    """Inside speech a quiet consonant between loud vowels draws the lips
    together (partly), the vowels part them; silence closes them."""
    sil = np.zeros(int(0.2 * SR), np.float32)
    audio = np.concatenate([sil, _tone(0.2), _tone(0.12, 0.01), _tone(0.2), sil])
    timings = [("a", 0.2, 0.4), ("t", 0.4, 0.52), ("a", 0.52, 0.72)]
    track = mouth.mouth_track(audio, SR, timings)
    t = np.arange(track.shape[0]) / mouth.TRACK_RATE
    vowel = (t > 0.27) & (t < 0.33)
    cons = (t > 0.43) & (t < 0.47)
    assert track[vowel, 3].max() < 0.05 and track[vowel, 0].min() > 0.5
    assert track[cons, 3].max() > 0.5  # lips nearly together on the quiet "t"
    assert track[cons, 0].max() < track[vowel, 0].min()
    assert track[(t > 0.8) & (t < 0.85), 3].min() > 0.9  # the pause after: closed


def test_anticipation():
    """The rounding of "u" starts before the "u" itself."""
    audio = np.concatenate([np.zeros(int(0.2 * SR), np.float32), _tone(0.6)])
    timings = [("i", 0.2, 0.5), ("u", 0.5, 0.8)]
    track = mouth.mouth_track(audio, SR, timings)
    row = int(0.5 * mouth.TRACK_RATE)
    lead = int(0.05 * mouth.TRACK_RATE)
    assert track[row - lead, 2] > 0.3  # already rounding 50 ms early
    assert track[row - lead, 1] < track[row - 15, 1]  # and narrowing


def test_align_phonemes_in_order_and_inside():
    audio, _ = _mama()
    timings = phonemes.align_phonemes("mˈɑmɑ", audio, SR)
    assert [p for p, _, _ in timings] == ["m", "ɑ", "m", "ɑ"]
    starts = [a for _, a, _ in timings]
    assert starts == sorted(starts)
    assert all(0.0 <= a < b <= len(audio) / SR + 0.011 for _, a, b in timings)


def test_rendered_lips_close_on_bilabial():
    """Frames rendered during the "m"s show the lips together: the rows between the
    lips (the teeth in the photo) are covered."""
    assets = AvatarAssets("astronaut", astronaut_image(), ASTRONAUT_META, 512)
    stream = PhotoAvatarStream(assets, seed=0)
    stream._motion = lambda: (0.0, 0.0, 0.0, 0.0)  # keep the mouth box in place
    audio, timings = _mama()
    a48 = np.repeat(audio, 2)
    stream.push_audio(a48, tag="t", speech=Speech(audio, SR, timings))
    stream.end_of_segment()
    m = ASTRONAUT_META["mouth"]
    ys = slice(int(m["upper_lip"]) + 3, int(m["parting"]) - 3)
    xs = slice(235, 255)
    teeth = []
    shapes = []
    for _ in range(int(np.ceil(a48.size / 1920)) + 2):
        f = stream.next_frame()
        assert f.image.shape == (512, 512, 3) and f.image.dtype == np.uint8
        box = f.image[ys, xs].astype(float)
        teeth.append(float((box[..., 0] - box[..., 2]).mean()))  # lips are redder than teeth
        shapes.append(stream.shape.copy())
    shapes = np.array(shapes)
    closed = shapes[:, 3] > 0.8
    assert closed.any() and (shapes[:, 0] > 0.3).any()
    # frames with the lips together show lip (red) where the photo shows teeth (white)
    box = assets.image[ys, xs].astype(float)
    rest = float((box[..., 0] - box[..., 2]).mean())
    assert min(teeth[i] for i in np.flatnonzero(closed)) > rest + 6, (teeth, rest)
    assert MEDIA_SAMPLE_RATE == 48_000


def test_spans_from_kokoro_tokens():
    # Kokoro's per-character spans of "mˈɑːm ba.": stress joins the next phoneme,
    # the length mark the previous one, space and punctuation stay gaps.
    spoken = [
        ("m", 0.10, 0.15),
        ("ˈ", 0.15, 0.20),
        ("ɑ", 0.20, 0.25),
        ("ː", 0.25, 0.30),
        ("m", 0.30, 0.40),
        (" ", 0.40, 0.45),
        ("b", 0.45, 0.50),
        ("a", 0.50, 0.60),
        (".", 0.60, 0.60),
    ]
    spans = phonemes.spans_from_tokens(spoken, shift_s=0.0)
    assert [p for p, _, _ in spans] == ["m", "ɑ", "m", "b", "a"]
    assert spans[1] == ("ɑ", 0.15, 0.30)
    shifted = phonemes.spans_from_tokens(spoken)
    assert shifted[0][1] == 0.10 + phonemes.KOKORO_SHIFT_S


def test_kokoro_timed_graph(tmp_path):
    """The graph edit on a toy graph with the same Round -> Clip -> Cast tail."""
    import pytest

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from models.tts import kokoro_timing

    nodes = [
        helper.make_node("Round", ["x"], ["r"]),
        helper.make_node("Clip", ["r", "lo"], ["c"]),
        helper.make_node("Cast", ["c"], ["d"], to=TensorProto.INT64),
        helper.make_node("Mul", ["x", "x"], ["audio"]),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor("lo", TensorProto.FLOAT, [], [1.0])],
    )
    src = tmp_path / "toy.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    out = kokoro_timing.make_timed_model(src)
    assert out == tmp_path / "toy.timed.onnx"
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["audio", "duration"]
    audio, dur = sess.run(None, {"x": np.array([[0.2, 2.6, 3.4]], np.float32)})
    assert np.allclose(audio, [[0.04, 6.76, 11.56]])
    assert dur.tolist() == [[1, 3, 3]]
