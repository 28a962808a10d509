"""MuseTalk 1.5's three networks, loaded from ``weights/musetalk/`` and run on
torch: the UNet (diffusers ``UNet2DConditionModel``), the SD VAE (diffusers
``AutoencoderKL``) and the Whisper-tiny encoder (transformers ``WhisperModel``).

What runs mirrors upstream TMElyralab/MuseTalk at 0a89dec4 (learnt from, not
copied): ``musetalk/utils/utils.py`` ``load_all_model`` (the layout below),
``musetalk/models/unet.py`` (``UNet2DConditionModel(**musetalk.json)`` and a
plain state dict in ``unet.pth``; a sinusoidal positional encoding of width 384
added to the audio features), ``musetalk/models/vae.py`` (256x256 crops, the
lower half zeroed for the masked input, latents times ``scaling_factor``),
``musetalk/utils/audio_processor.py`` (16 kHz audio in 30 s segments, every
encoder hidden state stacked, 50 feature steps a second, a frame's window of
2 frames before and 2 after) and ``scripts/realtime_inference.py`` (one UNet
step at timestep 0 on [masked, reference] latents, then the VAE decoder).

Heavy imports happen inside functions: the backend registry imports every
module of models/avatar/ to find the backends, and torch is an extra.
Nothing is ever downloaded: every ``from_pretrained`` gets a local folder and
``local_files_only=True``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.base import BackendUnavailable

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PIP_LINE = "pip install -e '.[musetalk]' (torch, diffusers, transformers)"

# ``models/musetalkV15/musetalk.json`` of the Hugging Face repository
# TMElyralab/MuseTalk (the code at github.com/TMElyralab/MuseTalk 0a89dec4 reads
# it as ``--unet_config``). Used when the weights folder has no copy, and by the
# key check against a full-size UNet built on the meta device.
MUSETALK_V15_UNET_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}

CROP = 256  # the face crop the VAE sees (latents 32x32)
AUDIO_RATE = 16_000  # Whisper's input
FEATURE_RATE = 50  # Whisper encoder steps per second
SEGMENT_S = 30  # Whisper's fixed input length
PAD_LEFT_FRAMES = 2  # a frame's audio window: 2 video frames before ...
PAD_RIGHT_FRAMES = 2  # ... and 2 after (upstream audio_padding_length_left/right)


@dataclass(frozen=True)
class MuseTalkPaths:
    """Where the loader reads MuseTalk's weights (upstream's ``models/`` folder,
    here ``weights/musetalk/``)."""

    root: Path

    @property
    def unet(self) -> Path:
        return self.root / "musetalkV15" / "unet.pth"

    @property
    def unet_config(self) -> Path:
        return self.root / "musetalkV15" / "musetalk.json"

    @property
    def vae(self) -> Path:
        return self.root / "sd-vae"  # config.json + diffusion_pytorch_model.{bin,safetensors}

    @property
    def whisper(self) -> Path:
        # config.json + pytorch_model.bin (or model.safetensors) + preprocessor_config.json
        return self.root / "whisper"

    @property
    def face_parsing(self) -> Path:
        return self.root / "face-parse-bisent" / "79999_iter.pth"

    def missing(self) -> list[str]:
        """The files the loader needs that are not there."""
        need = [self.unet, self.vae / "config.json", self.whisper / "config.json"]
        need.append(self.whisper / "preprocessor_config.json")
        gone = [str(p) for p in need if not p.is_file()]
        if not _any_file(
            self.vae, ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
        ):
            gone.append(str(self.vae / "diffusion_pytorch_model.bin"))
        if not _any_file(self.whisper, ("model.safetensors", "pytorch_model.bin")):
            gone.append(str(self.whisper / "pytorch_model.bin"))
        return gone


def _any_file(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / name).is_file() for name in names)


def import_torch() -> Any:
    """torch, or BackendUnavailable naming the install line (diffusers and
    transformers are checked too: the backend needs all three)."""
    try:
        import diffusers  # noqa: F401
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(
            f"avatar.backend 'musetalk' needs torch, diffusers and transformers ({exc.name} is "
            f"missing): {PIP_LINE}; on a GPU machine install torch's CUDA build first"
        ) from exc
    return torch


def pick_device(name: str) -> torch.device:
    """The torch device for ``avatar.musetalk.device``; a CUDA device torch
    cannot see is refused, never silently replaced by the CPU."""
    torch = import_torch()
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable(
            f"avatar.backend 'musetalk' is set to run on {name!r} but torch sees no CUDA GPU "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}): install torch's "
            "CUDA build on a GPU machine, or set avatar.musetalk.device: cpu to run it (very "
            "slowly) on the CPU"
        )
    return device


def unet_config(paths: MuseTalkPaths) -> dict[str, Any]:
    """musetalk.json from the weights folder, else the embedded copy."""
    if paths.unet_config.is_file():
        config: dict[str, Any] = json.loads(paths.unet_config.read_text())
        return config
    return dict(MUSETALK_V15_UNET_CONFIG)


def expected_unet_keys(config: dict[str, Any]) -> set[str]:
    """The state-dict keys of ``UNet2DConditionModel(**config)``, built on the
    meta device (no memory, no initialisation)."""
    torch = import_torch()
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        model: Any = UNet2DConditionModel(**config)  # an nn.Module (its stubs say less)
    return set(model.state_dict())


def check_unet_keys(state: dict[str, Any] | set[str], expected: set[str], where: Path) -> None:
    """Refuse a checkpoint whose keys differ from the model's, naming a few."""
    keys = set(state)
    missing, unexpected = sorted(expected - keys), sorted(keys - expected)
    if missing or unexpected:
        raise BackendUnavailable(
            f"{where} does not fit musetalk.json's UNet: {len(missing)} keys missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
            "it should be MuseTalk 1.5's musetalkV15/unet.pth"
        )


def positional_encoding(length: int, width: int) -> np.ndarray:
    """The sinusoidal encoding upstream adds to the audio features
    (sin on even channels, cos on odd ones), (length, width) float32."""
    position = np.arange(length, dtype=np.float64)[:, None]
    rate = np.exp(np.arange(0, width, 2, dtype=np.float64) * (-math.log(10000.0) / width))
    pe = np.zeros((length, width), np.float64)
    pe[:, 0::2] = np.sin(position * rate)
    pe[:, 1::2] = np.cos(position * rate)[:, : width // 2]
    return pe.astype(np.float32)


def frame_window(features: torch.Tensor, start_sample: int, sample_rate: int) -> torch.Tensor:
    """The audio prompt of the video frame starting ``start_sample`` samples
    into the chunk whose Whisper features (T, layers, width) are ``features``:
    10 feature steps (2 frames before to 3 after the frame's start, zeros
    outside the chunk), all layers flattened: (10 * layers, width)."""
    per_frame = FEATURE_RATE // 25  # 2 steps a video frame
    length = per_frame * (PAD_LEFT_FRAMES + PAD_RIGHT_FRAMES + 1)
    first = int(start_sample * FEATURE_RATE // sample_rate) - per_frame * PAD_LEFT_FRAMES
    window = features.new_zeros((length, *features.shape[1:]))
    lo, hi = max(first, 0), min(first + length, features.shape[0])
    if hi > lo:
        window[lo - first : hi - first] = features[lo:hi]
    out: torch.Tensor = window.reshape(length * features.shape[1], features.shape[2])
    return out


class MuseTalkNets:
    """The loaded networks on one device (fp16 on CUDA, fp32 on the CPU).
    Not thread-safe: the one worker thread calls it (models/avatar/musetalk_worker.py)."""

    def __init__(self, paths: MuseTalkPaths, device: str = "cuda") -> None:
        torch = import_torch()
        missing = paths.missing()
        if missing:
            raise BackendUnavailable(
                "avatar.backend 'musetalk' needs MuseTalk 1.5's weights, missing here: "
                + ", ".join(missing)
                + " (the layout: weights/README.md; upstream's download_weights.sh fetches "
                "musetalkV15/unet.pth + musetalk.json, sd-vae (stabilityai/sd-vae-ft-mse) and "
                "whisper (openai/whisper-tiny))"
            )
        pick_device(device)  # no GPU: said before gigabytes are read
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import WhisperFeatureExtractor, WhisperModel

        config = unet_config(paths)
        state = torch.load(paths.unet, map_location="cpu", weights_only=True)
        with torch.device("meta"):  # the checkpoint fills it: no random init of ~0.85 G params
            unet: Any = UNet2DConditionModel(**config)  # an nn.Module (its stubs say less)
        check_unet_keys(state, set(unet.state_dict()), paths.unet)
        unet.load_state_dict(state, strict=True, assign=True)
        vae = AutoencoderKL.from_pretrained(str(paths.vae), local_files_only=True)
        whisper = WhisperModel.from_pretrained(str(paths.whisper), local_files_only=True)
        extractor = WhisperFeatureExtractor.from_pretrained(
            str(paths.whisper), local_files_only=True
        )
        self._setup(paths, device, unet, vae, whisper, extractor)
        log.info("MuseTalk 1.5 loaded on %s (%s) from %s", self.device, self.dtype, paths.root)

    @classmethod
    def from_modules(
        cls, paths: MuseTalkPaths, device: str, unet: Any, vae: Any, whisper: Any, extractor: Any
    ) -> MuseTalkNets:
        """Networks built elsewhere (bench/musetalk.py: full size, random weights)."""
        nets = cls.__new__(cls)
        nets._setup(paths, device, unet, vae, whisper, extractor)
        return nets

    def _setup(
        self, paths: MuseTalkPaths, device: str, unet: Any, vae: Any, whisper: Any, extractor: Any
    ) -> None:
        torch = import_torch()
        self.paths = paths
        self.device = pick_device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.unet = unet.to(self.device, self.dtype).eval().requires_grad_(False)
        self.vae = vae.to(self.device, self.dtype).eval().requires_grad_(False)
        self.scaling = float(self.vae.config.scaling_factor)
        self.whisper = whisper.encoder.to(self.device, self.dtype).eval().requires_grad_(False)
        self.features = extractor
        width = int(unet.config.cross_attention_dim)
        if int(whisper.config.d_model) != width:
            raise BackendUnavailable(
                f"{paths.whisper} is a Whisper of width {whisper.config.d_model}, the UNet "
                f"attends to {width}: MuseTalk 1.5 takes whisper-tiny"
            )
        self.width = width
        self.layers = int(whisper.config.encoder_layers) + 1  # every hidden state
        self.prompt_tokens = 2 * (PAD_LEFT_FRAMES + PAD_RIGHT_FRAMES + 1) * self.layers
        pe = positional_encoding(self.prompt_tokens, width)
        self.pe = torch.from_numpy(pe).to(self.device, self.dtype)
        self.timestep = torch.zeros(1, dtype=torch.long, device=self.device)

    # ---------------------------------------------------------------- audio
    def audio_features(self, audio_16k: np.ndarray) -> torch.Tensor:
        """Whisper encoder features of one chunk of 16 kHz audio: (steps, layers,
        width) at 50 steps a second, trimmed to the chunk's length."""
        torch = import_torch()
        audio = np.asarray(audio_16k, np.float32).reshape(-1)
        segment = SEGMENT_S * AUDIO_RATE
        parts = []
        with torch.inference_mode():
            for start in range(0, max(audio.size, 1), segment):
                mel = self.features(
                    audio[start : start + segment], sampling_rate=AUDIO_RATE, return_tensors="pt"
                ).input_features
                out = self.whisper(mel.to(self.device, self.dtype), output_hidden_states=True)
                parts.append(torch.stack(out.hidden_states, dim=2)[0])  # (1500, layers, width)
        steps = audio.size * FEATURE_RATE // AUDIO_RATE
        return torch.cat(parts, dim=0)[:steps]

    # ---------------------------------------------------------------- image
    def _to_tensor(self, crops: np.ndarray) -> torch.Tensor:
        torch = import_torch()
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
        return x.permute(0, 3, 1, 2).to(self.dtype) / 127.5 - 1.0

    def encode(self, crops: np.ndarray) -> torch.Tensor:
        """(N, 256, 256, 3) uint8 RGB face crops -> (N, 8, 32, 32) UNet inputs:
        the latents of the crop with its lower half blanked, then of the whole
        crop. The distribution's mode, not a sample (as upstream's training-time
        ``get_image_pred``; its realtime script samples), so preparing twice
        gives the same latents."""
        torch = import_torch()
        with torch.inference_mode():
            full = self._to_tensor(crops)
            masked = full.clone()
            masked[:, :, CROP // 2 :, :] = -1.0  # black, as 0 before normalising
            latents = [self.vae.encode(x).latent_dist.mode() * self.scaling for x in (masked, full)]
            return torch.cat(latents, dim=1)

    def render(self, latents: torch.Tensor, prompts: torch.Tensor) -> np.ndarray:
        """One UNet step at timestep 0 and the VAE decoder for a batch:
        ``latents`` (B, 8, 32, 32), ``prompts`` (B, tokens, width) audio
        windows -> (B, 256, 256, 3) uint8 RGB faces."""
        torch = import_torch()
        with torch.inference_mode():
            cond = prompts.to(self.device, self.dtype) + self.pe[: prompts.shape[1]]
            x = latents.to(self.device, self.dtype)
            pred = self.unet(x, self.timestep, encoder_hidden_states=cond).sample
            image = self.vae.decode(pred / self.scaling).sample
            image = ((image.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
            out: np.ndarray = image.permute(0, 2, 3, 1).cpu().numpy()
            return out
