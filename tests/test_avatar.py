"""The CPU photo avatar: audio accounting of the buffered stream and the renderer
(the FaceMesh mouth mesh: opening, bilabial closure, a still background)."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest

import models.avatar.assets as avatar_assets
from models.avatar.assets import ASTRONAUT_META, AvatarAssets, astronaut_image
from models.avatar.buffered import BufferedAvatarStream
from models.avatar.faces import FaceMesher, detect_landmarks
from models.avatar.model import PhotoAvatarModel
from models.avatar.photo import PhotoAvatarStream
from models.base import MEDIA_FPS, MEDIA_SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME, Speech

N = SAMPLES_PER_VIDEO_FRAME


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> PhotoAvatarModel:
    return PhotoAvatarModel(tmp_path_factory.mktemp("weights"))


def speech_like(seconds: float, amplitude: float = 0.5) -> np.ndarray:
    """A voiced buzz with a 4 Hz syllable envelope."""
    t = np.arange(int(seconds * MEDIA_SAMPLE_RATE)) / MEDIA_SAMPLE_RATE
    voice = np.sign(np.sin(2 * np.pi * 180 * t)) * 0.6 + 0.4 * np.sin(2 * np.pi * 540 * t)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
    return (amplitude * voice * envelope).astype(np.float32)


def mouth_box(model: PhotoAvatarModel, margin: int = 8) -> tuple[slice, slice]:
    x0, y0, x1, y1 = model.assets("astronaut").mouth.roi
    return slice(y0 - margin, y1 + margin), slice(x0 - margin, x1 + margin)


class Recorder(BufferedAvatarStream):
    """Records what render() was given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[np.ndarray, np.ndarray, bool]] = []

    def render(self, window: np.ndarray, lookahead: np.ndarray, speaking: bool) -> np.ndarray:
        self.calls.append((window.copy(), lookahead.copy(), speaking))
        return np.zeros((4, 4, 3), np.uint8)


# ------------------------------------------------------------- buffered stream
def test_frame_size_dtype_and_audio_length(model: PhotoAvatarModel) -> None:
    assert N * MEDIA_FPS == MEDIA_SAMPLE_RATE == 48_000  # one frame per 40 ms of audio: 25 fps
    stream = model.new_stream(seed=0)
    frame = stream.next_frame()
    assert frame.image.shape == (512, 512, 3)
    assert frame.image.dtype == np.uint8
    assert frame.audio.shape == (N,)
    assert frame.audio.dtype == np.int16
    assert not frame.audio.any()
    assert frame.speaking is False
    assert frame.played == []

    stream.push_audio(np.full(N // 2, 0.25, np.float32), tag="x")
    frame = stream.next_frame()
    assert frame.audio.shape == (N,)
    assert (frame.audio[: N // 2] == 8192).all()  # 0.25 * 32767, rounded
    assert not frame.audio[N // 2 :].any()  # padded with silence
    assert frame.speaking is True
    assert frame.played == [("x", N // 2)]


def test_played_accounting_across_frame_boundaries() -> None:
    stream = Recorder()
    stream.push_audio(np.full(1000, 0.1, np.float32), tag="a")
    stream.push_audio(np.full(3000, 0.2, np.float32), tag="b")
    stream.push_audio(np.full(500, 0.3, np.float32))  # untagged: not accounted
    stream.push_audio(np.full(100, 0.4, np.float32), tag="b")
    stream.push_audio(np.full(N, 0.5, np.float32), tag="c")
    assert stream.queued_samples == 1000 + 3000 + 500 + 100 + N

    f1 = stream.next_frame()
    assert f1.played == [("a", 1000), ("b", N - 1000)]
    assert stream.queued_samples == 4600 + N - N
    f2 = stream.next_frame()
    assert f2.played == [("b", N)]
    f3 = stream.next_frame()
    # 160 left of b, 500 untagged, 100 of the second b (counted with the first),
    # then c.
    assert f3.played == [("b", 3000 - (N - 1000) - N + 100), ("c", N - 160 - 600)]
    f4 = stream.next_frame()
    assert f4.played == [("c", 760)]
    assert stream.queued_samples == 0
    total: dict[str, int] = {}
    for f in (f1, f2, f3, f4):
        for tag, n in f.played:
            total[tag] = total.get(tag, 0) + n
    assert total == {"a": 1000, "b": 3100, "c": N}
    # The samples went out in order, exactly once.
    audio = np.concatenate([f.audio for f in (f1, f2, f3, f4)])
    expected = np.concatenate(
        [
            np.full(n, round(v * 32767))
            for n, v in ((1000, 0.1), (3000, 0.2), (500, 0.3), (100, 0.4), (N, 0.5))
        ]
    )
    assert np.array_equal(audio[: expected.size], expected)
    assert not audio[expected.size :].any()


def test_render_gets_window_and_lookahead() -> None:
    stream = Recorder()
    ramp = np.arange(5 * N, dtype=np.float32) / (5 * N)
    stream.push_audio(ramp, tag=1)
    stream.next_frame()
    window, lookahead, speaking = stream.calls[-1]
    assert np.array_equal(window, ramp[:N])
    assert np.array_equal(lookahead, ramp[N : N + stream.lookahead_samples])
    assert lookahead.size == MEDIA_SAMPLE_RATE // 10 and speaking
    for _ in range(4):
        stream.next_frame()
    assert stream.calls[-1][1].size == 0  # nothing queued after the last frame


def test_speaking_follows_the_segment() -> None:
    stream = Recorder()
    assert stream.next_frame().speaking is False
    stream.push_audio(np.full(N, 0.1, np.float32), tag=0)
    assert stream.next_frame().speaking is True
    # Queue dry but the reply is not over (TTS still working): still speaking.
    assert stream.next_frame().speaking is True
    stream.end_of_segment()
    assert stream.next_frame().speaking is False


def test_clear_drops_queued_audio_immediately() -> None:
    stream = Recorder()
    stream.push_audio(np.full(MEDIA_SAMPLE_RATE, 0.3, np.float32), tag="s")
    stream.next_frame()
    assert stream.queued_samples == MEDIA_SAMPLE_RATE - N
    stream.clear()
    assert stream.queued_samples == 0
    frame = stream.next_frame()
    assert not frame.audio.any()
    assert frame.played == []
    assert frame.speaking is False
    # Audio pushed after the clear plays next.
    stream.push_audio(np.full(10, 0.3, np.float32), tag="t")
    assert stream.next_frame().played == [("t", 10)]


def test_push_from_another_thread_while_rendering() -> None:
    stream = Recorder()
    chunks, size = 200, 777

    def produce() -> None:
        for i in range(chunks):
            stream.push_audio(np.full(size, 0.1, np.float32), tag=i % 3)
            time.sleep(0.0001)

    producer = threading.Thread(target=produce)
    producer.start()
    played = 0
    while producer.is_alive() or stream.queued_samples:
        played += sum(n for _, n in stream.next_frame().played)
    producer.join()
    assert played == chunks * size


# ------------------------------------------------------------------- renderer
def test_unknown_avatar_raises_key_error(model: PhotoAvatarModel) -> None:
    assert "astronaut" in model.avatars()
    with pytest.raises(KeyError, match="unknown avatar 'nobody'"):
        model.new_stream("nobody")


def test_silence_keeps_the_idle_closed_mouth(model: PhotoAvatarModel) -> None:
    idle = model.new_stream(seed=7)
    quiet = model.new_stream(seed=7)
    quiet.push_audio(np.zeros(2 * MEDIA_SAMPLE_RATE, np.float32), tag="silence")
    rows, cols = mouth_box(model)
    for _ in range(50):
        a, b = idle.next_frame(), quiet.next_frame()
        assert np.array_equal(a.image[rows, cols], b.image[rows, cols])
        assert quiet.opening == 0.0


def test_loud_audio_opens_the_mouth_and_silence_closes_it(model: PhotoAvatarModel) -> None:
    idle = model.new_stream(seed=3)
    talk = model.new_stream(seed=3)
    talk.push_audio(speech_like(1.0), tag="hello")
    talk.end_of_segment()
    rows, cols = mouth_box(model)
    rig = model.assets("astronaut").mouth
    c0, r0, c1, r1 = rig.cav
    gap = slice(rig.roi[1] + r0, rig.roi[1] + r1), slice(rig.roi[0] + c0, rig.roi[0] + c1)
    diffs, darker, openings = [], [], []
    for _ in range(25):
        a, b = idle.next_frame(), talk.next_frame()
        diffs.append(np.abs(a.image[rows, cols].astype(int) - b.image[rows, cols]).mean())
        darker.append(a.image[gap].mean() - b.image[gap].mean())
        openings.append(talk.opening)
    assert max(diffs) > 6.0, diffs  # a clearly different mouth region
    assert max(openings) > 0.5
    assert max(darker) > 25, darker  # opened into a dark cavity
    # After the reply the mouth closes at once and, once the livelier head
    # motion of speech has calmed down, the frame is the idle render again.
    for _ in range(15):
        idle.next_frame(), talk.next_frame()
    assert talk.opening == 0.0
    for _ in range(80):
        a, b = idle.next_frame(), talk.next_frame()
    assert np.array_equal(a.image[rows, cols], b.image[rows, cols])


def test_mouth_anticipates_the_sound(model: PhotoAvatarModel) -> None:
    stream = model.new_stream(seed=1)
    lead = 3 * N  # 120 ms of silence, then speech
    stream.push_audio(np.concatenate([np.zeros(lead, np.float32), speech_like(0.5)]), tag=0)
    openings = []
    for _ in range(3):
        frame = stream.next_frame()
        assert not frame.audio.any()
        openings.append(stream.opening)
    assert openings[0] < 0.05
    assert openings[-1] > 0.2  # opening before the first sound is played
    assert openings == sorted(openings)


def test_blinks_and_idle_motion(model: PhotoAvatarModel) -> None:
    stream = model.new_stream(seed=5)
    assets = model.assets("astronaut")
    frames = [stream.next_frame().image for _ in range(250)]  # 10 s
    # The face moves a little, the background corners do not move at all.
    assert not all(np.array_equal(frames[0], f) for f in frames[1:])
    for f in frames:
        assert np.array_equal(f[:60, :60], assets.image[:60, :60])
        assert np.array_equal(f[:60, -60:], assets.image[:60, -60:])

    # Blinks: with the head motion switched off, the eyes differ from the photo
    # only during blinks, a few frames each, a couple of seconds apart.
    still = model.new_stream(seed=5)
    still._motion = lambda: (0.0, 0.0, 0.0, 0.0)  # type: ignore[method-assign]
    x0, y0, x1, y1 = assets.eyes[0].roi
    closed = []
    for _ in range(250):
        image = still.next_frame().image
        closed.append(not np.array_equal(image[y0:y1, x0:x1], assets.image[y0:y1, x0:x1]))
    starts = [i for i in range(1, 250) if closed[i] and not closed[i - 1]]
    assert 2 <= len(starts) <= 8, starts
    runs = [closed[s:].index(False) if False in closed[s:] else 250 - s for s in starts]
    assert max(runs) <= 9  # a double blink at most


def test_streams_are_independent(model: PhotoAvatarModel) -> None:
    a, b = model.new_stream(seed=1), model.new_stream(seed=2)
    frames_a = [a.next_frame().image for _ in range(30)]
    frames_b = [b.next_frame().image for _ in range(30)]
    assert any(not np.array_equal(x, y) for x, y in zip(frames_a, frames_b, strict=True))
    assert a.assets is b.assets  # the precomputed avatar is shared


def test_prepared_avatar_from_weights_dir(tmp_path) -> None:
    folder = tmp_path / "avatars" / "half"
    folder.mkdir(parents=True)
    image = cv2.resize(astronaut_image(), (256, 256), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "image.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    meta = json.loads(json.dumps(ASTRONAUT_META))
    meta["size"] = 512  # coordinates given for a 512 px image, scaled to its 256 px
    (folder / "meta.json").write_text(json.dumps(meta))
    model = PhotoAvatarModel(tmp_path, size=320, default="half")
    assert model.avatars() == ["astronaut", "half"]
    stream = model.new_stream()
    assert stream.assets.name == "half"
    stream.push_audio(speech_like(0.5), tag=0)
    frames = [stream.next_frame() for _ in range(8)]
    assert frames[-1].image.shape == (320, 320, 3)
    assert stream.opening > 0.3
    # The geometry was scaled with the image.
    ours = model.assets("half").mouth.roi
    reference = model.assets("astronaut").mouth.roi  # at 320 px too
    assert all(abs(a - b) <= 1 for a, b in zip(ours, reference, strict=True)), (ours, reference)


def test_long_reply_renders_in_sync(model: PhotoAvatarModel) -> None:
    """Six seconds of syllables (4 a second), then idle: every frame carries
    exactly its share of the reply's audio, and the mouth opens once per
    syllable, a frame ahead of its sound, and is closed soon after the end.
    (Render time is measured by the benchmark and the calibration.)"""
    stream = model.new_stream(seed=0)
    audio = speech_like(6.0)
    stream.push_audio(audio, tag="reply")
    stream.end_of_segment()
    frames, openings = [], []
    for _ in range(250):
        frame = stream.next_frame()
        assert frame.image.shape == (512, 512, 3) and frame.image.dtype == np.uint8
        assert frame.audio.shape == (N,) and frame.audio.dtype == np.int16
        frames.append(frame)
        openings.append(stream.opening)
    n_speech = audio.size // N
    assert n_speech == 150
    assert [f.speaking for f in frames] == [True] * n_speech + [False] * (250 - n_speech)
    assert sum(n for f in frames for _, n in f.played) == audio.size
    sent = np.concatenate([f.audio for f in frames])
    expected = np.rint(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    assert np.array_equal(sent[: audio.size], expected) and not sent[audio.size :].any()

    opening = np.array(openings)
    loudness = np.array([np.sqrt(np.mean((f.audio / 32768.0) ** 2)) for f in frames])
    rises = np.diff(opening[:n_speech])
    peaks = int(((rises[:-1] > 0) & (rises[1:] <= 0)).sum())
    assert 20 <= peaks <= 28, peaks  # one opening per syllable
    lead = {
        lag: float(np.corrcoef(opening[10:140], loudness[10 + lag : 140 + lag])[0, 1])
        for lag in range(-2, 3)
    }
    assert max(lead, key=lead.__getitem__) == 1 and lead[1] > 0.9, lead  # 40 ms ahead
    assert np.all(opening[n_speech + 5 :] == 0.0)  # closed 0.2 s after the reply


# ------------------------------------------------------------------ mouth mesh
@pytest.fixture(scope="module")
def mesher():
    m = FaceMesher(static=True)
    yield m
    m.close()


def lip_gap(mesher: FaceMesher, image: np.ndarray) -> float:
    """Inner-lip gap (FaceMesh 13-14) over the mouth width (61-291), as the
    lip-sync eval measures it."""
    lm = mesher(image)
    assert lm is not None, "FaceMesh lost the face"
    return float(np.linalg.norm(lm[13] - lm[14]) / np.linalg.norm(lm[61] - lm[291]))


def still_stream(assets: AvatarAssets) -> PhotoAvatarStream:
    """A stream without head motion or blinks: only the mouth changes."""
    stream = PhotoAvatarStream(assets, seed=0)
    stream._motion = lambda: (0.0, 0.0, 0.0, 0.0)  # type: ignore[method-assign]
    stream._advance_blink = lambda: 0.0  # type: ignore[method-assign]
    return stream


def render_shape(stream: PhotoAvatarStream, shape: tuple[float, ...]) -> np.ndarray:
    stream.frame_shape = np.array(shape, np.float32)
    return stream.render(np.zeros(N, np.float32), np.zeros(0, np.float32), True)


def test_mesh_is_built_on_facemesh_landmarks(model: PhotoAvatarModel) -> None:
    assets = model.assets("astronaut")
    assert assets.landmarks is not None and assets.landmarks.shape == (478, 2)
    rig = assets.mouth
    assert rig.source == "landmarks"
    x0, y0, x1, y1 = rig.roi
    lm = assets.landmarks
    # The region holds the lips and the chin, and stays below the eyes.
    assert x0 < lm[61, 0] < lm[291, 0] < x1 and y0 < lm[13, 1] < lm[152, 1] < y1
    assert y0 > max(e["lower"] for e in assets.meta["eyes"])
    assert rig.gain > 0.5  # the jaw opens nearly as far as asked, without folds


def test_mouth_opens_with_openness(model: PhotoAvatarModel, mesher: FaceMesher) -> None:
    stream = still_stream(model.assets("astronaut"))
    rows, cols = mouth_box(model)
    gaps, dark = [], []
    for o in (0.0, 0.3, 0.6, 1.0):
        image = render_shape(stream, (o, 0.5, 0.0, 0.0))
        gaps.append(lip_gap(mesher, image))
        dark.append(int((image[rows, cols].max(axis=2) < 90).sum()))  # cavity pixels
    # FaceMesh's reading is a little noisy; the cavity grows strictly.
    assert min(gaps[1:]) > gaps[0] + 0.05 and gaps[-1] > gaps[0] + 0.1, gaps
    assert dark[0] < dark[1] < dark[2] < dark[3] and dark[-1] > 400, dark


def test_no_folds_for_any_shape(model: PhotoAvatarModel) -> None:
    rig = model.assets("astronaut").mouth
    rng = np.random.default_rng(0)
    for shape in rng.uniform([0, -1, 0, 0], [1, 1, 1, 1], (40, 4)):
        shape[0] *= 1.0 - 0.4 * shape[2]  # as _fit_gain: rounded lips open less
        assert rig.min_jacobian(tuple(shape)) > 0.1, shape


def test_mouth_warp_leaves_the_background_alone(model: PhotoAvatarModel) -> None:
    assets = model.assets("astronaut")
    stream = still_stream(assets)
    x0, y0, x1, y1 = assets.mouth.roi
    outside = np.ones((assets.size, assets.size), bool)
    outside[y0:y1, x0:x1] = False
    for shape in ((1.0, 1.0, 0.0, 0.0), (0.6, 0.0, 1.0, 0.0), (0.0, 0.5, 0.0, 1.0), (1, 0, 1, 1)):
        image = render_shape(stream, shape)
        assert np.array_equal(image[outside], assets.image[outside])
        # No seam at the edge of the warped region: its border rows and columns
        # are the photo's own pixels.
        assert np.array_equal(image[y0, x0:x1], assets.image[y0, x0:x1])
        assert np.array_equal(image[y1 - 1, x0:x1], assets.image[y1 - 1, x0:x1])
        assert np.array_equal(image[y0:y1, x0], assets.image[y0:y1, x0])
        assert np.array_equal(image[y0:y1, x1 - 1], assets.image[y0:y1, x1 - 1])


def mama_speech() -> Speech:
    """'mama' at 24 kHz: a quiet hum for each m, a loud vowel for each a."""
    sr = 24_000

    def tone(seconds: float, amplitude: float) -> np.ndarray:
        t = np.arange(int(seconds * sr)) / sr
        return (amplitude * np.sin(2 * np.pi * 160 * t) * np.hanning(t.size)).astype(np.float32)

    sil = np.zeros(int(0.2 * sr), np.float32)
    audio = np.concatenate(
        [sil, tone(0.12, 0.03), tone(0.24, 0.5), tone(0.12, 0.03), tone(0.24, 0.5), sil]
    )
    timings = [("m", 0.2, 0.32), ("ɑ", 0.32, 0.56), ("m", 0.56, 0.68), ("ɑ", 0.68, 0.92)]
    return Speech(audio, sr, timings)


def test_lips_close_on_bilabials(model: PhotoAvatarModel, mesher: FaceMesher) -> None:
    """In a rendered "mama", FaceMesh sees the lips together (gap below 0.06 of
    the mouth width, the eval's threshold) during each m, and apart on each a,
    although the photo itself shows a gap (a smile with teeth)."""
    assets = model.assets("astronaut")
    assert lip_gap(mesher, np.array(assets.image)) > 0.1
    stream = still_stream(assets)
    speech = mama_speech()
    audio = np.repeat(speech.audio, 2)  # 48 kHz
    stream.push_audio(audio, tag="mama", speech=speech)
    stream.end_of_segment()
    gaps = []
    for _ in range(audio.size // N):
        gaps.append(lip_gap(mesher, stream.next_frame().image))
    t = (np.arange(len(gaps)) + 0.5) / MEDIA_FPS  # frame centres, s
    for _, a, b in (s for s in speech.phonemes if s[0] == "m"):
        assert min(g for g, tc in zip(gaps, t, strict=True) if a - 0.02 <= tc <= b + 0.02) < 0.06
    for _, a, b in (s for s in speech.phonemes if s[0] == "ɑ"):
        assert max(g for g, tc in zip(gaps, t, strict=True) if a <= tc <= b) > 0.12


def write_avatar(folder, meta: dict | None) -> np.ndarray:
    folder.mkdir(parents=True)
    image = astronaut_image()
    cv2.imwrite(str(folder / "image.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if meta is not None:
        (folder / "meta.json").write_text(json.dumps(meta))
    return image


def test_avatar_without_stored_landmarks(tmp_path, monkeypatch, mesher: FaceMesher) -> None:
    """Avatars prepared before landmarks.npy existed: FaceMesh runs once at load;
    without mediapipe (or a face) the mesh is built on the meta.json geometry;
    and without meta.json either, the geometry comes from the landmarks."""
    write_avatar(tmp_path / "avatars" / "old", ASTRONAUT_META)
    write_avatar(tmp_path / "avatars" / "bare", None)
    model = PhotoAvatarModel(tmp_path)
    for name in ("old", "bare"):
        assets = model.assets(name)
        assert assets.mouth.source == "landmarks" and assets.landmarks.shape == (478, 2)
    bare = model.assets("bare").meta["mouth"]
    assert abs(bare["chin"] - ASTRONAUT_META["mouth"]["chin"]) < 12

    monkeypatch.setattr(avatar_assets, "detect_landmarks", lambda image: None)
    model = PhotoAvatarModel(tmp_path)
    assets = model.assets("old")
    assert assets.landmarks is None and assets.mouth.source == "meta"
    stream = still_stream(assets)
    closed = render_shape(stream, (0.0, 0.5, 0.0, 1.0))
    opened = render_shape(stream, (0.9, 0.5, 0.0, 0.0))
    assert lip_gap(mesher, closed) < 0.06 < 0.12 < lip_gap(mesher, opened)
    assert model.assets("bare").mouth.source == "meta"  # Haar box + proportions


def test_stored_landmarks_are_used_without_facemesh(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "avatars" / "astronaut"  # a prepared one replaces the built-in
    image = write_avatar(folder, ASTRONAUT_META)
    lm = detect_landmarks(image)
    np.save(folder / "landmarks.npy", lm.astype(np.float32))

    def no_facemesh(image: np.ndarray) -> None:
        raise AssertionError("FaceMesh ran although landmarks.npy is there")

    monkeypatch.setattr(avatar_assets, "detect_landmarks", no_facemesh)
    model = PhotoAvatarModel(tmp_path, size=256)
    assert model.avatars() == ["astronaut"]
    assets = model.assets("astronaut")
    assert assets.mouth.source == "landmarks"
    assert np.allclose(assets.landmarks, lm * 0.5, atol=1e-3)  # scaled with the image
