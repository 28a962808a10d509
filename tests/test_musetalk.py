"""MuseTalk 1.5 (avatar.backend: musetalk) without a GPU or its weights.

* The worker and the stream with a fake inference function (no torch): one
  queue for several sessions, earliest deadline first, every frame's picture
  made for the audio it plays with, barge-in dropping one session's frames,
  a renderer that falls behind never holding up the frame.
* The real code on tiny randomly initialised networks of MuseTalk's
  architectures (the UNet with musetalk.json's block types and layer counts
  at tiny widths, a tiny AutoencoderKL, a tiny Whisper), saved in the real
  layout of weights/musetalk/ and loaded by the real loader; the full-size UNet
  built on the meta device has exactly the keys the loader checks for.
  These need torch, diffusers and transformers (the `musetalk` extra) and
  are skipped, saying so, without them.
* A session with the MuseTalk renderer on the tiny networks, on the CPU,
  through the same clock, barge-in and events as the default.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.avatar.musetalk_nets import MUSETALK_V15_UNET_CONFIG, MuseTalkPaths
from models.avatar.musetalk_prepare import (
    MuseTalkAvatar,
    SourceFrames,
    blend_mask,
    blur_size,
    face_box,
    ping_pong,
)
from models.avatar.musetalk_stream import MuseTalkStream
from models.avatar.musetalk_worker import (
    FRAME_PERIOD,
    BatchWorker,
    choose_batch_size,
    measure,
)
from models.base import MEDIA_SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME, BackendUnavailable

N = SAMPLES_PER_VIDEO_FRAME
TINY_WIDTH = 16  # the tiny Whisper's width = the tiny UNet's cross-attention width


# ================================================================ no torch
class Recorder:
    """A fake inference function: records each batch; ``gate`` holds it."""

    def __init__(self, render: Any = None) -> None:
        self.batches: list[list[Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.render = render or (lambda payload: payload)

    def __call__(self, payloads: Sequence[Any]) -> list[Any]:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(list(payloads))
        return [self.render(p) for p in payloads]


def test_the_worker_serves_sessions_from_one_queue_earliest_deadline_first() -> None:
    infer = Recorder()
    worker = BatchWorker(infer, batch_size=3)
    try:
        infer.gate.clear()
        blocker = worker.submit("x", 0.0, ("x", 0))  # holds the worker while the rest queue
        assert infer.entered.wait(5)
        jobs = []
        # Three sessions, each with frames 40 ms apart, starting at other times.
        for session, start in (("a", 1.00), ("b", 1.01), ("c", 1.02)):
            for k in range(4):
                deadline = start + k * FRAME_PERIOD
                jobs.append(worker.submit(session, deadline, (session, k)))
        infer.gate.set()
        assert all(job.wait(5) for job in jobs) and blocker.wait(5)
    finally:
        worker.close()
    batches = infer.batches[1:]
    assert [len(b) for b in batches] == [3, 3, 3, 3]
    order = [p for b in batches for p in b]
    by_deadline = sorted(
        ((s, k) for s in "abc" for k in range(4)),
        key=lambda p: {"a": 1.00, "b": 1.01, "c": 1.02}[p[0]] + p[1] * FRAME_PERIOD,
    )
    assert order == by_deadline  # every session's frames interleaved by deadline
    assert all(len({s for s, _ in b}) == 3 for b in batches)  # one batch, three sessions
    assert all(job.result == job.payload for job in jobs)  # each result on its own job
    assert worker.stats.frames == 13 and worker.stats.largest_batch == 3


def test_dropping_a_session_removes_its_pending_frames_only() -> None:
    infer = Recorder()
    worker = BatchWorker(infer, batch_size=2)
    try:
        infer.gate.clear()
        worker.submit("x", 0.0, "x")
        assert infer.entered.wait(5)
        mine = [worker.submit("me", 1.0 + k, ("me", k)) for k in range(5)]
        theirs = [worker.submit("them", 1.0 + k, ("them", k)) for k in range(5)]
        assert worker.pending("me") == 5 and worker.pending() == 10
        assert worker.drop("me") == 5
        assert worker.pending("me") == 0 and worker.pending("them") == 5
        assert all(job.done() and job.cancelled for job in mine)
        infer.gate.set()
        assert all(job.wait(5) and not job.cancelled for job in theirs)
    finally:
        worker.close()
    rendered = [p for b in infer.batches for p in b]
    assert rendered == ["x"] + [("them", k) for k in range(5)]


def test_calls_run_before_frames_and_errors_reach_the_jobs() -> None:
    def infer(payloads: Sequence[Any]) -> list[Any]:
        if "bad" in payloads:
            raise RuntimeError("out of memory")
        return list(payloads)

    worker = BatchWorker(infer, batch_size=4)
    try:
        assert worker.call(lambda a, b: a + b, 2, 3).result(5) == 5
        bad = worker.submit("s", 1.0, "bad")
        assert bad.wait(5) and isinstance(bad.error, RuntimeError)
        good = worker.submit("s", 2.0, "good")  # the worker survives a failed batch
        assert good.wait(5) and good.result == "good"
    finally:
        worker.close()


def test_the_batch_size_is_the_largest_that_keeps_up() -> None:
    # Seconds per batch of 1, 2, 4, 8 frames (a GPU: nearly flat).
    assert choose_batch_size({1: 0.02, 2: 0.025, 4: 0.03, 8: 0.05}, max_batch_s=0.2) == 8
    # The latency budget caps it.
    assert choose_batch_size({1: 0.02, 2: 0.03, 4: 0.08, 8: 0.3}, max_batch_s=0.2) == 4
    # Nothing keeps up (a CPU): one frame at a time, the least latency.
    assert choose_batch_size({1: 2.0, 2: 4.0}, max_batch_s=0.2) == 1

    now = [0.0]
    cost = {1: 0.02, 2: 0.025, 4: 0.03, 8: 0.05}
    seen: list[int] = []

    def timed(payloads: Sequence[Any]) -> list[Any]:  # time passes on a fake clock
        seen.append(len(payloads))
        now[0] += cost[len(payloads)]
        return list(payloads)

    result = measure(timed, "p", clock=lambda: now[0])
    assert seen[0] == 1 and sorted(set(seen)) == [1, 2, 4, 8]  # a warm-up, then each size
    assert result.chosen == 8 and result.seconds[8] == pytest.approx(0.05)
    assert "batch 8" in result.describe()


# ------------------------------------------------------- the stream, faked
FACE = 256


class FakeAvatar(MuseTalkAvatar):
    """A grey 64 px picture; the generated 'face' replaces it whole."""

    def __init__(self) -> None:
        image = np.full((64, 64, 3), 100, np.uint8)
        sources = SourceFrames(lambda i: image, 1, None)
        mask = np.full((64, 64), 255, np.uint8)
        super().__init__("fake", sources, [(0, 0, 64, 64)], [mask], None, "box")  # type: ignore[arg-type]


def code_of(chunk: int, start: int) -> int:
    """A grey level naming (chunk, frame start): what the fake face is painted with."""
    return 1 + (chunk * 37 + start // N) % 250


def fake_stream(worker: BatchWorker, **kwargs: Any) -> MuseTalkStream:
    # Features of a chunk: the chunk's id, read from its first sample.
    def features(audio: np.ndarray) -> int:
        return int(round(float(audio[0]) * 100))

    def payload(chunk: int, start: int, frame: int) -> int:
        return code_of(chunk, start)

    return MuseTalkStream(FakeAvatar(), worker, features, payload, size=64, **kwargs)


def paint(code: int) -> np.ndarray:
    return np.full((FACE, FACE, 3), code, np.uint8)


def chunk_audio(chunk: int, samples: int) -> np.ndarray:
    audio = np.full(samples, 0.2, np.float32)
    audio[0] = chunk / 100  # the chunk's id for the fake features
    return audio


def test_each_frame_shows_the_picture_made_for_its_own_audio() -> None:
    worker = BatchWorker(Recorder(paint), batch_size=4)
    stream = fake_stream(worker, min_wait_s=5.0)
    try:
        sizes = [5000, 3000, 4100]  # none a whole number of frames
        chunks = [chunk_audio(i + 1, n) for i, n in enumerate(sizes)]
        stream.push_audio(chunks[0], tag="a")
        stream.push_audio(chunks[1], tag="b", prepared=stream.prepare(chunks[1]))
        stream.push_audio(chunks[2], tag="c")
        stream.end_of_segment()
        total = sum(sizes)
        assert stream.queued_samples == total
        frames = [stream.next_frame() for _ in range(-(-total // N))]
        played = np.concatenate([f.audio for f in frames])
        expected = np.rint(np.concatenate(chunks) * 32767).astype(np.int16)
        assert np.array_equal(played[:total], expected) and not played[total:].any()
        # Each frame's picture is the one made for the chunk and offset its audio starts at.
        starts = np.cumsum([0, *sizes])
        for index, frame in enumerate(frames):
            at = index * N
            chunk = int(np.searchsorted(starts, at, side="right")) - 1
            assert frame.image[32, 32, 0] == code_of(chunk + 1, at - starts[chunk]), index
        tags: dict[str, int] = {}
        for frame in frames:
            for tag, n in frame.played:
                tags[tag] = tags.get(tag, 0) + n
        assert tags == {"a": 5000, "b": 3000, "c": 4100}
        assert stream.rendered_frames == len(frames) and stream.late_frames == 0
        assert not stream.next_frame().speaking
    finally:
        worker.close()


def test_a_renderer_behind_shows_the_last_picture_and_never_holds_the_frame() -> None:
    infer = Recorder(paint)
    worker = BatchWorker(infer, batch_size=1)
    stream = fake_stream(worker)
    try:
        stream.push_audio(chunk_audio(1, 2 * N), tag="a")
        first = stream.next_frame()  # waits at most until its deadline (40 ms)
        infer.gate.clear()  # the worker now stalls
        stream.push_audio(chunk_audio(2, 4 * N), tag="b")
        started = time.monotonic()
        frames = [stream.next_frame() for _ in range(5)]
        assert time.monotonic() - started < 2.0  # deadlines, not the stalled worker
        assert [f.played for f in frames] == [[("a", N)]] + [[("b", N)]] * 4
        assert all(f.speaking for f in frames) and stream.late_frames >= 4
        late = frames[-1].image
        assert np.array_equal(late, frames[-2].image)  # the last picture, held
        assert first.image.shape == late.shape == (64, 64, 3)
    finally:
        infer.gate.set()
        worker.close()


def test_clear_drops_the_streams_frames_and_not_the_others() -> None:
    infer = Recorder(paint)
    worker = BatchWorker(infer, batch_size=2)
    mine, other = fake_stream(worker), fake_stream(worker)
    try:
        audio = {stream: chunk_audio(i + 1, 10 * N) for i, stream in enumerate((mine, other))}
        features = {stream: stream.prepare(audio[stream]) for stream in audio}  # on the worker
        infer.gate.clear()  # the first batch will hold the worker
        hold = threading.Event()
        worker.call(hold.wait, 5)  # ... after both streams' frames are queued
        for stream, tag in ((mine, "mine"), (other, "other")):
            stream.push_audio(audio[stream], tag=tag, prepared=features[stream])
        hold.set()
        deadline = time.monotonic() + 10
        while mine.pending_jobs + other.pending_jobs != 18:  # 20 frames, one batch taken
            assert time.monotonic() < deadline
            time.sleep(0.01)
        mine.clear()  # barge-in in one session
        assert mine.queued_samples == 0 and mine.pending_jobs == 0
        assert other.pending_jobs >= 8 and other.queued_samples == 10 * N
        after = mine.next_frame()
        assert not after.audio.any() and after.played == [] and not after.speaking
    finally:
        infer.gate.set()
        worker.close()


def test_silence_gets_the_idle_picture_without_a_render() -> None:
    infer = Recorder(paint)
    worker = BatchWorker(infer, batch_size=2)
    stream = fake_stream(worker)
    try:
        stream.push_audio(np.zeros(3 * N, np.float32), tag="pause")
        frames = [stream.next_frame() for _ in range(3)]
        assert all(f.played == [("pause", N)] for f in frames)
        assert all(f.image[0, 0, 0] == 100 for f in frames) and infer.batches == []
    finally:
        worker.close()


def test_a_clip_plays_forward_then_backward() -> None:
    assert [ping_pong(3, k) for k in range(8)] == [0, 1, 2, 2, 1, 0, 0, 1]
    assert [ping_pong(1, k) for k in range(3)] == [0, 0, 0]


def test_face_box_and_mask_from_landmarks() -> None:
    from models.avatar.assets import astronaut_image
    from models.avatar.faces import CHIN, MOUTH_LEFT, NOSE_BASE, detect_landmarks

    image = astronaut_image()
    lm = detect_landmarks(image)
    if lm is None:
        pytest.skip("mediapipe found no face (not installed?)")
    x1, y1, x2, y2 = face_box(lm, image.shape)
    assert 0 <= x1 < lm[MOUTH_LEFT, 0] and y1 < lm[NOSE_BASE, 1] < lm[CHIN, 1] < y2 <= 512
    mask = blend_mask(lm, (x1, y1, x2, y2))
    assert mask.shape == (y2 - y1, x2 - x1)
    mouth = (lm[MOUTH_LEFT] - (x1, y1)).astype(int)
    assert mask[mouth[1], mouth[0] + 5] > 200  # the mouth is replaced ...
    blur = blur_size((x1, y1, x2, y2))
    assert not mask[: (y2 - y1) // 2 - blur // 2].any()  # ... the upper face is kept


def test_the_jaw_region_follows_upstreams_parsing_classes() -> None:
    from models.avatar.musetalk_parsing import jaw_region

    classes = np.zeros((512, 512), np.uint8)
    classes[150:350, 150:362] = 1  # skin
    classes[200:260, 240:272] = 10  # nose
    classes[290:300, 220:292] = 12  # upper lip
    region = jaw_region(classes)
    assert region[295, 256] == 255  # the lips are redrawn
    assert region[230, 256] == 0  # the nose is not
    assert region[353, 256] == 255  # grown past the skin's edge (cv2.dilate, upstream's kernel)
    assert region[100, 256] == 0 and region[360, 256] == 0
    assert region[250, 155] == 0 and region[250, 200] == 255  # narrowed at the cheeks only


# ============================================================ tiny models
def write_tiny_musetalk(weights: Path) -> MuseTalkPaths:
    """Tiny random MuseTalk networks in the real layout under weights/musetalk/."""
    torch = pytest.importorskip("torch", reason="torch is not installed (the musetalk extra)")
    pytest.importorskip("diffusers", reason="diffusers is not installed (the musetalk extra)")
    pytest.importorskip("transformers", reason="transformers is not installed (the musetalk extra)")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    paths = MuseTalkPaths(weights / "musetalk")
    if paths.unet.is_file():
        return paths
    torch.manual_seed(0)
    # musetalk.json's block types and layer counts; the widths keep its pattern
    # (equal last two), so every state-dict key is the full-size one.
    config = dict(
        MUSETALK_V15_UNET_CONFIG,
        block_out_channels=[8, 16, 32, 32],
        norm_num_groups=8,
        cross_attention_dim=TINY_WIDTH,
    )
    paths.unet.parent.mkdir(parents=True)
    paths.unet_config.write_text(json.dumps(config))
    torch.save(UNet2DConditionModel(**config).state_dict(), paths.unet)
    vae = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 16, 32, 32],  # sd-vae-ft-mse: 128, 256, 512, 512
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=256,
    )
    vae.save_pretrained(paths.vae)
    whisper = WhisperModel(
        WhisperConfig(
            d_model=TINY_WIDTH,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            num_mel_bins=80,
            max_source_positions=1500,  # 30 s at 50 steps a second, as whisper-tiny
            max_target_positions=16,
            vocab_size=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        )
    )
    whisper.save_pretrained(paths.whisper)
    WhisperFeatureExtractor().save_pretrained(paths.whisper)  # 80 mel bins, 16 kHz, 30 s
    return paths


def tiny_model(weights: Path, *, size: int = 160, batch_size: int = 4) -> Any:
    """The backend on the tiny networks, on the CPU, through load_avatar."""
    torch = pytest.importorskip("torch", reason="torch is not installed (the musetalk extra)")
    from core.config import AvatarConfig, MuseTalkConfig
    from models.avatar import load_avatar

    torch.set_num_threads(1)  # tiny layers: threads only wait on each other
    write_tiny_musetalk(weights)
    config = AvatarConfig(
        backend="musetalk",
        size=size,
        musetalk=MuseTalkConfig(device="cpu", batch_size=batch_size),
    )
    model = load_avatar(config, weights)
    model.stream_min_wait_s = 60.0  # type: ignore[attr-defined]  # virtual time: wait for every picture
    return model


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights folder with the astronaut prepared as `videochat weights` does."""
    from tools.avatar_prepare import ensure_default_avatar

    folder = tmp_path_factory.mktemp("weights")
    ensure_default_avatar(folder / "avatars")
    return folder


@pytest.fixture(scope="module")
def model(weights: Path) -> Iterator[Any]:
    built = tiny_model(weights)
    yield built
    built.close()


def test_the_loader_runs_the_tiny_networks_in_the_real_layout(weights: Path, model: Any) -> None:
    import torch

    nets = model.nets
    assert nets.device.type == "cpu" and nets.dtype == torch.float32
    assert nets.layers == 2 and nets.prompt_tokens == 20  # 10 steps x (embedding + 1 layer)
    features = nets.audio_features(np.zeros(16_000, np.float32))  # 1 s
    assert tuple(features.shape) == (50, 2, TINY_WIDTH)
    crops = np.random.default_rng(0).integers(0, 255, (2, 256, 256, 3), dtype=np.uint8)
    latents = nets.encode(crops)
    assert tuple(latents.shape) == (2, 8, 32, 32)
    again = nets.encode(crops)
    assert torch.equal(latents, again)  # the mode: preparing twice gives the same
    prompts = torch.zeros((2, nets.prompt_tokens, TINY_WIDTH))
    faces = nets.render(latents, prompts)
    assert faces.shape == (2, 256, 256, 3) and faces.dtype == np.uint8
    # The prepared astronaut and the worker's batch size.
    assert model.avatars() == ["astronaut"] and model.worker.batch_size == 4


def test_the_full_size_unet_has_exactly_the_keys_the_loader_expects(weights: Path) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed (the musetalk extra)")
    from models.avatar.musetalk_nets import check_unet_keys, expected_unet_keys

    paths = write_tiny_musetalk(weights)
    full = expected_unet_keys(MUSETALK_V15_UNET_CONFIG)
    tiny = torch.load(paths.unet, map_location="cpu", weights_only=True)
    assert set(tiny) == full  # the tiny checkpoint stands for the real one, key for key
    check_unet_keys(full, full, paths.unet)
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**MUSETALK_V15_UNET_CONFIG)
    params = sum(p.numel() for p in unet.parameters())
    assert 800e6 < params < 900e6  # MuseTalk's UNet: SD 1.x's with 384-wide cross-attention
    assert unet.conv_in.in_channels == 8 and unet.conv_out.out_channels == 4
    broken = dict(tiny)
    broken.pop("conv_in.weight")
    broken["conv_in.extra"] = torch.zeros(1)
    with pytest.raises(BackendUnavailable, match=r"1 keys missing.*conv_in\.weight.*1 unexpected"):
        check_unet_keys(broken, full, paths.unet)


def test_frame_windows_follow_upstream() -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed (the musetalk extra)")
    from models.avatar.musetalk_nets import frame_window

    features = torch.arange(1, 21, dtype=torch.float32).reshape(20, 1, 1)  # 0.4 s
    first = frame_window(features, 0, MEDIA_SAMPLE_RATE)
    assert first.flatten().tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6]  # 2 frames before: zeros
    fifth = frame_window(features, 4 * N, MEDIA_SAMPLE_RATE)  # 160 ms: step 8
    assert fifth.flatten().tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    last = frame_window(features, 9 * N, MEDIA_SAMPLE_RATE)
    assert last.flatten().tolist() == [15, 16, 17, 18, 19, 20, 0, 0, 0, 0]


def test_missing_weights_and_gpu_are_named(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed (the musetalk extra)")
    from models.avatar.musetalk_nets import MuseTalkNets, pick_device

    with pytest.raises(BackendUnavailable, match=r"musetalk/musetalkV15/unet\.pth.*sd-vae"):
        MuseTalkNets(MuseTalkPaths(tmp_path / "musetalk"), "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match=r"no CUDA GPU.*device: cpu"):
            pick_device("cuda")


def test_a_prepared_avatar_is_cached_beside_the_photo_renderers_data(
    weights: Path, model: Any
) -> None:
    from models.avatar.musetalk import sources_of
    from models.avatar.musetalk_prepare import prepare_avatar

    folder = weights / "avatars" / "astronaut"
    cache = folder / "musetalk"
    assert (folder / "image.png").is_file()  # the photo renderer's data, beside it
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["frames"] == 1 and meta["parsing"] == "landmarks"
    assert (cache / "latents.npy").is_file() and (cache / "masks.npz").is_file()
    made = model.avatar("astronaut")
    stamp = (cache / "latents.npy").stat().st_mtime_ns
    again = prepare_avatar(
        "astronaut", sources_of(model.photo.assets("astronaut"), folder), model.nets, cache
    )
    assert (cache / "latents.npy").stat().st_mtime_ns == stamp  # read, not made again
    assert np.array_equal(again.latents.numpy(), made.latents.numpy())
    assert again.boxes == made.boxes


def test_blend_masks_come_from_bisenet_when_its_weights_are_there(
    weights: Path, model: Any, tmp_path: Path
) -> None:
    import copy

    import torch

    from models.avatar.musetalk import sources_of
    from models.avatar.musetalk_parsing import build_bisenet
    from models.avatar.musetalk_prepare import prepare_avatar

    net = build_bisenet()  # 13.3 M parameters, as upstream's 53 MB 79999_iter.pth
    assert 13.2e6 < sum(p.numel() for p in net.parameters()) < 13.4e6
    root = tmp_path / "musetalk"
    paths = MuseTalkPaths(root)
    paths.face_parsing.parent.mkdir(parents=True)
    torch.save(net.state_dict(), paths.face_parsing)
    (root / "sd-vae").symlink_to(model.nets.paths.vae)
    nets = copy.copy(model.nets)
    nets.paths = paths
    assets = model.photo.assets("astronaut")
    parsed = prepare_avatar("astronaut", sources_of(assets, None), nets, root / "cache")
    assert parsed.parsing == "bisenet"
    assert json.loads((root / "cache" / "meta.json").read_text())["parsing"] == "bisenet"
    (x1, y1, x2, y2), mask = parsed.boxes[0], parsed.masks[0]
    assert mask.shape == (y2 - y1, x2 - x1)
    assert not mask[: (y2 - y1) // 2 - blur_size(parsed.boxes[0]) // 2].any()
    assert model.avatar("astronaut").parsing == "landmarks"  # the module's weights: no BiSeNet


# ------------------------------------------------------- a whole session
async def test_a_session_runs_end_to_end_on_the_musetalk_renderer(model: Any) -> None:
    from pipelines.timebase import VirtualTime
    from tests.fakes import ToneTTS, fake_engines
    from tests.test_session import QUESTION_EN, make_session, of_type, speak, wait_until

    clock = VirtualTime()
    engines = fake_engines(tts=ToneTTS(seconds_per_char=0.005))
    engines.avatar = model
    session, events = make_session(engines, clock)
    session.config.llm.cut_when_queued_audio_below_s = 0
    try:
        assert isinstance(session.avatar, MuseTalkStream)
        speak(session, QUESTION_EN)
        await wait_until(lambda: len(session.turns) == 1, clock, timeout=30)
        assert [e["text"] for e in of_type(events, "bot_text")] == [
            "Sure,",
            "the capital of France is Paris.",
            "It is lovely.",
        ]
        states = [e["value"] for e in of_type(events, "state")]
        assert states[-3:] == ["thinking", "speaking", "listening"]
        turn = session.turns[0]
        assert all(p.complete and p.played == p.samples for p in turn.pieces)
        assert session.avatar.rendered_frames > 0 and session.avatar.late_frames == 0
        latency = of_type(events, "turn")[0]["latency"]
        assert latency["asr_final"] <= latency["first_audio_sent"] <= latency["reply_done"]
    finally:
        await session.close()
        await clock.aclose()
    assert session.avatar.pending_jobs == 0  # closed: nothing left in the worker


async def test_barge_in_drops_the_sessions_frames_on_the_musetalk_renderer(model: Any) -> None:
    from pipelines.timebase import VirtualTime
    from tests.fakes import ScriptedLLM, ToneTTS, fake_engines, tone
    from tests.test_session import QUESTION_EN, make_session, speak, wait_until

    clock = VirtualTime()
    long_reply = "Sure, " + " ".join(["Paris is a very old and beautiful city."] * 4)
    engines = fake_engines(
        llm=ScriptedLLM({"France": long_reply}), tts=ToneTTS(seconds_per_char=0.02)
    )
    engines.avatar = model
    session, events = make_session(engines, clock)
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: session.state == "speaking", clock, timeout=30)
        await clock.sleep(0.3)
        assert session.avatar.queued_samples > 0
        started = clock.now()
        while session.state == "speaking":
            session.feed_mic(tone(660, 0.02))
            await clock.sleep(0.02)
            assert clock.now() - started < 1.0, "reply did not stop"
        assert session.avatar.queued_samples == 0 and session.avatar.pending_jobs == 0
        turn = session.turns[0]
        assert turn.interrupted
        heard = session.history.turns[1]["content"]
        assert heard and heard != long_reply and long_reply.startswith(heard)
    finally:
        await session.close()
        await clock.aclose()
