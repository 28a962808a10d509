"""Avatars from a photo or a clip: preparation, every bad input, CLI and REST."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from skimage import data

from models.avatar_prepare import (
    AvatarError,
    AvatarLimits,
    ensure_default_avatar,
    face_landmarks,
    list_avatars,
    prepare_avatar,
    remove_avatar,
)
from server import cli
from server.app import create_app
from server.config import load_config
from tests.fakes import BlankAvatarModel, fake_engines


def write_png(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def write_clip(path: Path, seconds: float = 2.0, fps: int = 25) -> Path:
    """The astronaut swaying a few pixels and nodding, as an MP4."""
    image = data.astronaut()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 512, 512, "yuv420p"
        stream.bit_rate = 4_000_000
        for i in range(int(seconds * fps)):
            t = i / fps
            m = np.float32([[1, 0, 4 * math.sin(2 * math.pi * 0.7 * t)], [0, 1, 2 * math.sin(t)]])
            frame = cv2.warpAffine(image, m, (512, 512), borderMode=cv2.BORDER_REPLICATE)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sources")
    a = data.astronaut()
    return {
        "photo": write_png(d / "astronaut.png", a),
        "clip": write_clip(d / "clip.mp4"),
        "text": _write(d / "notes.png", b"this is not an image at all\n" * 20),
        "gray": write_png(d / "gray.png", np.full((512, 512, 3), 128, np.uint8)),
        "two": write_png(d / "two.png", np.concatenate([a, a], axis=1)),
        "small": write_png(
            d / "small.png", cv2.resize(a, (120, 120), interpolation=cv2.INTER_AREA)
        ),
    }


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ------------------------------------------------------------------ preparation
def test_prepare_photo(sources: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "avatars"
    seen: list[float] = []
    info = prepare_avatar(
        "anne", sources["photo"], "photo", root, progress=lambda f, m: seen.append(f)
    )
    folder = root / "anne"
    assert info.mode == "photo" and info.path == folder
    assert sorted(p.name for p in folder.iterdir()) == ["image.png", "landmarks.npy", "meta.json"]
    image = cv2.imread(str(folder / "image.png"))
    assert image.shape == (512, 512, 3)
    lm = np.load(folder / "landmarks.npy")
    assert lm.shape == (478, 2) and lm.dtype == np.float32
    width = lm[:, 0].max() - lm[:, 0].min()
    assert 0.3 * 512 < width < 0.5 * 512  # the face fills ~40 % of the crop
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["mode"] == "photo" and meta["size"] == 512 and meta["fps"] == 25
    m = meta["mouth"]
    assert m["left"][0] < m["right"][0] and m["parting"] < m["chin"]
    eyes = meta["eyes"]
    assert len(eyes) == 2 and eyes[0]["corners"][0][0] < eyes[1]["corners"][0][0]
    assert all(e["upper"] < e["lower"] < m["parting"] for e in eyes)
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    assert leftovers(root) == ["anne", "anne/image.png", "anne/landmarks.npy", "anne/meta.json"]
    # The renderer reads it and builds its mouth mesh on the stored landmarks.
    from models.avatar_photo import PhotoAvatarModel

    assets = PhotoAvatarModel(tmp_path).assets("anne")
    assert assets.mouth.source == "landmarks" and np.allclose(assets.landmarks, lm)
    # Repeatable: the same name again replaces it.
    prepare_avatar("anne", sources["photo"], None, root)
    assert [i.name for i in list_avatars(root)] == ["anne"]
    assert len(leftovers(root)) == 4


def test_face_landmarks(sources: dict[str, Path]) -> None:
    rgb = cv2.cvtColor(cv2.imread(str(sources["photo"])), cv2.COLOR_BGR2RGB)
    lm = face_landmarks(rgb)
    assert lm is not None and lm.shape == (478, 2) and lm.dtype == np.float32
    assert (lm >= 0).all() and (lm < 512).all()
    assert lm[61, 0] < lm[291, 0] and lm[13, 1] < lm[14, 1] < lm[152, 1]  # mouth, chin
    assert face_landmarks(np.full((256, 256, 3), 128, np.uint8)) is None


def test_prepare_clip(sources: dict[str, Path], tmp_path: Path) -> None:
    info = prepare_avatar("clip", sources["clip"], None, tmp_path)
    folder = tmp_path / "clip"
    assert info.mode == "video" and info.frames == 50
    frames = sorted((folder / "frames").glob("*.jpg"))
    assert len(frames) == 50 and frames[0].name == "000000.jpg"
    assert cv2.imread(str(frames[10])).shape == (512, 512, 3)
    lm = np.load(folder / "landmarks.npy")
    assert lm.shape == (50, 478, 2) and lm.dtype == np.float32
    # The crop box is fixed: the head's sway shows in the landmarks.
    nose_x = lm[:, 1, 0]
    assert nose_x.max() - nose_x.min() > 3
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["mode"] == "video" and meta["frames"] == 50 and meta["frames_dir"] == "frames"
    assert cv2.imread(str(folder / "image.png")).shape == (512, 512, 3)
    assert not (tmp_path / ".tmp").exists()


def test_default_avatar_is_prepared_once(tmp_path: Path) -> None:
    info = ensure_default_avatar(tmp_path)
    assert info is not None and info.name == "astronaut"
    assert (tmp_path / "astronaut" / "meta.json").is_file()
    assert ensure_default_avatar(tmp_path) is None
    with pytest.raises(AvatarError, match="default"):
        remove_avatar("astronaut", tmp_path)
    assert leftovers(tmp_path)[0] == "astronaut"


@pytest.mark.parametrize(
    ("source", "kind", "limits", "match"),
    [
        ("text", None, {}, "neither an image nor a video"),
        ("text", "photo", {}, "not an image"),
        ("text", "video", {}, "not a video"),
        ("gray", "photo", {}, "no face"),
        ("two", "photo", {}, "2 faces"),
        ("small", "photo", {}, "too small"),
        ("clip", "video", {"max_clip_seconds": 1.0}, "too long"),
        ("photo", "photo", {"max_upload_mb": 0.01}, "too large"),
        ("clip", "video", {"max_upload_mb": 0.01}, "too large"),
        ("photo", "video", {}, "too short"),
    ],
)
def test_bad_input(sources, tmp_path: Path, source: str, kind, limits: dict, match: str) -> None:
    with pytest.raises(AvatarError, match=match):
        prepare_avatar("bad", sources[source], kind, tmp_path, AvatarLimits(**limits))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x" * 41, ".hidden", "-x", "a b", "é"])
def test_bad_names(sources, tmp_path: Path, name: str) -> None:
    with pytest.raises(AvatarError, match="bad avatar name"):
        prepare_avatar(name, sources["photo"], "photo", tmp_path / "avatars")
    assert leftovers(tmp_path) == []


def test_remove(sources, tmp_path: Path) -> None:
    prepare_avatar("gone", sources["photo"], "photo", tmp_path)
    remove_avatar("gone", tmp_path)
    assert leftovers(tmp_path) == []
    with pytest.raises(AvatarError, match="no avatar"):
        remove_avatar("gone", tmp_path)


# ------------------------------------------------------------------------- CLI
def test_cli(sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("VIDEOCHAT_WEIGHTS_DIR", str(tmp_path))
    assert cli.main(["avatar", "add", "../evil", "--photo", str(sources["photo"])]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bad avatar name") and "\n" not in err
    assert cli.main(["avatar", "add", "flat", "--photo", str(sources["gray"])]) == 1
    assert "no face" in capsys.readouterr().err
    assert cli.main(["avatar", "add", "anne", "--photo", str(sources["photo"])]) == 0
    assert cli.main(["avatar", "list"]) == 0
    assert "anne\tphoto" in capsys.readouterr().out
    assert cli.main(["avatar", "remove", "astronaut"]) == 1
    assert cli.main(["avatar", "remove", "anne"]) == 0
    assert cli.main(["avatar", "remove", "anne"]) == 1
    assert leftovers(tmp_path / "avatars") == []


# ------------------------------------------------------------------------ REST
class FolderAvatarModel(BlankAvatarModel):
    """The blank renderer, listing the prepared folders after ``refresh()``."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.names = ["astronaut"]
        self.refreshed = 0

    def avatars(self) -> list[str]:
        return list(self.names)

    def refresh(self) -> None:
        self.refreshed += 1
        self.names = ["astronaut"] + [
            i.name for i in list_avatars(self.root) if i.name != "astronaut"
        ]


@pytest.fixture
def api(tmp_path: Path):
    config = load_config()
    config.weights_dir = tmp_path
    config.avatars.max_upload_mb = 1.0
    engines = fake_engines()
    engines.avatar = FolderAvatarModel(tmp_path / "avatars")
    with TestClient(create_app(config, engines)) as client:
        yield client, engines.avatar, tmp_path / "avatars"


def test_rest_add_list_progress_delete(api, sources) -> None:
    client, model, root = api
    assert client.get("/api/avatars").json() == [
        {"name": "astronaut", "mode": "photo", "ready": True}
    ]
    with open(sources["photo"], "rb") as f:
        r = client.post(
            "/api/avatars", data={"name": "anne"}, files={"file": ("me.png", f, "image/png")}
        )
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "anne" and r.json()["mode"] == "photo" and r.json()["ready"] is True
    assert model.refreshed == 1
    assert {"name": "anne", "mode": "photo", "ready": True} in client.get("/api/avatars").json()
    progress = client.get("/api/avatars/anne/progress").json()
    assert progress["state"] == "done" and progress["fraction"] == 1.0
    assert client.get("/api/avatars/nobody/progress").status_code == 404
    assert client.delete("/api/avatars/anne").json() == {"removed": "anne"}
    assert [a["name"] for a in client.get("/api/avatars").json()] == ["astronaut"]
    assert client.delete("/api/avatars/anne").status_code == 404
    assert client.delete("/api/avatars/astronaut").status_code == 400
    assert leftovers(root) == []


def test_avatars_added_by_the_cli_while_serving_show_up(api, sources) -> None:
    client, model, root = api
    prepare_avatar("anne", sources["photo"], None, root)  # `videochat avatar add` meanwhile
    assert "anne" in [a["name"] for a in client.get("/api/avatars").json()]
    assert model.refreshed == 1
    client.get("/api/avatars")
    assert model.refreshed == 1  # nothing changed since: no reload
    shutil.rmtree(root / "anne")  # removed behind the server's back
    assert [a["name"] for a in client.get("/api/avatars").json()] == ["astronaut"]


def test_rest_bad_input(api, sources) -> None:
    client, model, root = api

    def post(name: str, source: str, **extra):
        with open(sources[source], "rb") as f:
            return client.post(
                "/api/avatars", data={"name": name, **extra}, files={"file": ("x", f)}
            )

    r = post("flat", "gray")
    assert r.status_code == 400 and "no face" in r.json()["detail"]
    progress = client.get("/api/avatars/flat/progress").json()
    assert progress["state"] == "error" and "no face" in progress["error"]
    assert post("two", "two").status_code == 400
    assert post("junk", "text").status_code == 400
    assert post("x", "photo", kind="audio").status_code == 400
    for name in ("../x", "a b", "x" * 41):
        r = post(name, "photo")
        assert r.status_code == 400 and "bad avatar name" in r.json()["detail"]
    assert post("astronaut", "photo").status_code == 400
    big = np.random.default_rng(0).integers(0, 256, 2 * 1024 * 1024, dtype=np.uint8).tobytes()
    r = client.post("/api/avatars", data={"name": "big"}, files={"file": ("big.png", big)})
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    assert client.post("/api/avatars", data={"name": "nofile"}).status_code == 400
    assert model.refreshed == 0
    assert leftovers(root) == []
