"""The avatar backend ``musetalk``: MuseTalk 1.5 (TMElyralab/MuseTalk), one
GPU worker per process batching the frames of every session.

* Loading (models/avatar/musetalk_nets.py): ``weights/musetalk/musetalkV15/
  unet.pth`` into ``UNet2DConditionModel(**musetalk.json)``, ``sd-vae`` and the
  ``whisper`` (tiny) encoder, fp16 on CUDA (``avatar.musetalk.device``), fp32
  on the CPU. A missing package, folder or GPU stops start-up with a message
  naming what to install or fetch.
* Avatars (models/avatar/musetalk_prepare.py): the same prepared avatars as
  the photo renderer (``weights/avatars/<name>/``, read through
  ``PhotoAvatarModel``), plus their MuseTalk data made once and cached in
  ``weights/avatars/<name>/musetalk/``.
* Rendering: one ``BatchWorker`` (models/avatar/musetalk_worker.py) runs the
  per-chunk Whisper features and every session's frames, earliest deadline
  first, in batches of ``avatar.musetalk.batch_size`` (0: measured at
  start-up); each session's ``MuseTalkStream`` (models/avatar/
  musetalk_stream.py) keeps audio and pictures paired and never makes the
  clock wait.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import AvatarConfig, Config
from models.avatar.assets import AvatarAssets
from models.avatar.model import PhotoAvatarModel
from models.avatar.musetalk_nets import AUDIO_RATE, MuseTalkNets, MuseTalkPaths, frame_window
from models.avatar.musetalk_prepare import (
    CACHE_DIR,
    MuseTalkAvatar,
    SourceFrames,
    prepare_avatar,
)
from models.avatar.musetalk_stream import MuseTalkStream
from models.avatar.musetalk_worker import BatchMeasure, BatchWorker, measure
from models.avatar.video import VideoAvatarAssets
from models.backends import backend
from models.base import (
    MEDIA_SAMPLE_RATE,
    AvatarModel,
    BackendNeeds,
    PackageNeed,
    WeightNeed,
)
from models.needs import GB, MB, TORCH

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FramePayload:
    """One frame for the UNet: its source frame's latents and its audio window."""

    latents: torch.Tensor  # (8, 32, 32)
    prompt: torch.Tensor  # (tokens, width)


def to_16k(audio_48k: np.ndarray) -> np.ndarray:
    """Our 48 kHz reply audio at Whisper's 16 kHz."""
    from scipy.signal import resample_poly

    g = gcd(AUDIO_RATE, MEDIA_SAMPLE_RATE)
    return resample_poly(audio_48k, AUDIO_RATE // g, MEDIA_SAMPLE_RATE // g).astype(np.float32)


def sources_of(assets: AvatarAssets | VideoAvatarAssets, folder: Path | None) -> SourceFrames:
    """The pictures and landmarks the photo renderer loaded, as MuseTalk's
    source frames; ``stamp`` ties the cache to the files they came from."""
    names = ("image.png", "landmarks.npy", "meta.json")
    files = [folder / n for n in names] if folder is not None else []
    stamp = ";".join(
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files if p.is_file()
    )
    if isinstance(assets, VideoAvatarAssets):
        return SourceFrames(assets.frame, assets.n, assets.landmarks, None, f"video;{stamp}")
    image = assets.image
    lm = None if assets.landmarks is None else np.asarray(assets.landmarks, np.float32)[None]
    return SourceFrames(
        lambda i: image, 1, lm, assets.meta, f"photo;{assets.size};{stamp or 'built-in'}"
    )


@backend("avatar", "musetalk")
class MuseTalkAvatarModel(AvatarModel):
    """Loads the networks and every avatar's MuseTalk data once, starts the
    one worker; ``new_stream`` is cheap."""

    @classmethod
    def needs(cls, config: Config) -> BackendNeeds:
        """MuseTalk 1.5 in upstream's layout (TMElyralab/MuseTalk at 0a89dec,
        download_weights.sh and README.md "Download weights") under
        weights/musetalk/: the files our loader reads (models/avatar/musetalk_nets.py,
        ``MuseTalkPaths``). Upstream's DWPose, S3FD face detector and BiSeNet face
        parser serve its own avatar preparation, which ours replaces with FaceMesh
        landmarks (models/avatar/musetalk_prepare.py); weights/README.md lists them.
        Sizes are lower bounds of the published files."""
        hf = "huggingface-cli download"
        root = "weights/musetalk"
        return BackendNeeds(
            packages=(
                TORCH,
                PackageNeed("diffusers", "pip install diffusers"),
                PackageNeed("transformers", "pip install transformers"),
            ),
            weights=(
                WeightNeed(
                    "musetalk/musetalkV15/unet.pth",
                    3 * GB,
                    f"{hf} TMElyralab/MuseTalk --local-dir {root} --include 'musetalkV15/unet.pth'",
                ),
                WeightNeed(
                    "musetalk/musetalkV15/musetalk.json",
                    100,
                    f"{hf} TMElyralab/MuseTalk --local-dir {root} "
                    "--include 'musetalkV15/musetalk.json'",
                ),
                WeightNeed(
                    "musetalk/sd-vae/",
                    300 * MB,
                    f"{hf} stabilityai/sd-vae-ft-mse --local-dir {root}/sd-vae "
                    "--include config.json diffusion_pytorch_model.bin",
                ),
                WeightNeed(
                    "musetalk/whisper/",
                    140 * MB,
                    f"{hf} openai/whisper-tiny --local-dir {root}/whisper "
                    "--include config.json pytorch_model.bin preprocessor_config.json",
                ),
            ),
            cuda=True,
            gpu_memory_gb=6.0,
        )

    @classmethod
    def from_config(cls, config: AvatarConfig, weights_dir: Path) -> MuseTalkAvatarModel:
        nets = MuseTalkNets(MuseTalkPaths(Path(weights_dir) / "musetalk"), config.musetalk.device)
        return cls(
            nets,
            Path(weights_dir),
            size=config.size,
            default=config.default,
            batch_size=config.musetalk.batch_size,
            max_batch_s=config.musetalk.max_batch_s,
        )

    def __init__(
        self,
        nets: MuseTalkNets,
        weights_dir: Path,
        *,
        size: int = 512,
        default: str = "astronaut",
        batch_size: int = 0,
        max_batch_s: float = 0.2,
    ) -> None:
        self.nets = nets
        self.size = size
        # How long a stream waits for a late picture past its deadline: 0 in
        # service; tests on virtual time (where no real time passes) raise it.
        self.stream_min_wait_s = 0.0
        self.default = default
        # The avatars' pictures and landmarks, as the photo renderer reads them.
        self.photo = PhotoAvatarModel(weights_dir, size=size, default=default)
        self._prepared: dict[str, tuple[Any, MuseTalkAvatar]] = {}  # name -> (assets, data)
        self._prepare_all()
        self.measured: BatchMeasure | None = None
        if batch_size <= 0:
            self.measured = measure(self.infer, self._sample_payload(), max_batch_s=max_batch_s)
            batch_size = self.measured.chosen
            log.info("MuseTalk on %s: %s", nets.device, self.measured.describe())
        self.worker = BatchWorker(self.infer, batch_size, name="musetalk")

    # -------------------------------------------------------------- avatars
    def _prepare_all(self) -> None:
        kept: dict[str, tuple[Any, MuseTalkAvatar]] = {}
        for name in self.photo.avatars():
            assets = self.photo.assets(name)
            known = self._prepared.get(name)
            if known is not None and known[0] is assets:
                kept[name] = known
                continue
            folder = self.photo.weights_dir / "avatars" / name
            own = folder if (folder / "image.png").is_file() else None
            try:
                data = prepare_avatar(
                    name,
                    sources_of(assets, own),
                    self.nets,
                    own / CACHE_DIR if own is not None else None,
                )
            except Exception as exc:
                if name == self.default:
                    raise
                log.warning("avatar %r skipped by MuseTalk: %s", name, exc)
                continue
            kept[name] = (assets, data)
        self._prepared = kept

    def avatars(self) -> list[str]:
        return list(self._prepared)

    def refresh(self) -> None:
        """Re-read weights/avatars (the avatar API calls this in a thread):
        added or changed avatars are prepared for MuseTalk (or read from their
        cache), removed ones dropped; running streams keep theirs."""
        self.photo.refresh()
        self._prepare_all()

    def avatar(self, name: str) -> MuseTalkAvatar:
        try:
            return self._prepared[name][1]
        except KeyError:
            raise KeyError(f"unknown avatar {name!r}; available: {self.avatars()}") from None

    # ------------------------------------------------------------ rendering
    def features(self, audio_48k: np.ndarray) -> Any:
        """A chunk's Whisper features (called on the worker thread)."""
        return self.nets.audio_features(to_16k(audio_48k))

    def infer(self, payloads: Sequence[FramePayload]) -> list[np.ndarray]:
        """One batch: (B) payloads -> B 256x256 RGB faces (the worker calls it)."""
        torch = _torch()
        latents = torch.stack([p.latents for p in payloads])
        prompts = torch.stack([p.prompt for p in payloads])
        return list(self.nets.render(latents, prompts))

    def _payload_maker(self, avatar: MuseTalkAvatar) -> Any:
        def make(features: Any, start: int, frame: int) -> FramePayload:
            prompt = frame_window(features, start, MEDIA_SAMPLE_RATE)
            return FramePayload(avatar.latents[avatar.source(frame)], prompt)

        return make

    def _sample_payload(self) -> FramePayload:
        torch = _torch()
        avatar = self.avatar(self.default)
        prompt = torch.zeros(
            (self.nets.prompt_tokens, self.nets.width),
            device=self.nets.device,
            dtype=self.nets.dtype,
        )
        return FramePayload(avatar.latents[0], prompt)

    def new_stream(self, avatar: str | None = None) -> MuseTalkStream:
        data = self.avatar(avatar or self.default)
        return MuseTalkStream(
            data,
            self.worker,
            self.features,
            self._payload_maker(data),
            size=self.size,
            min_wait_s=self.stream_min_wait_s,
        )

    def close(self) -> None:
        """Stop the worker (tests, benchmarks; the server's process just ends)."""
        self.worker.close()


def _torch() -> Any:
    from models.avatar.musetalk_nets import import_torch

    return import_torch()
