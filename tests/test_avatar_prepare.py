"""Avatars from a photo or a clip: preparation, every bad input, CLI and REST."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import av
import cv2
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from skimage import data

from core.config import load_config
from models.avatar.faces import face_landmarks
from server import avatars_api, cli
from server.avatars_api import router as avatars_router
from server.uploads import JobTable
from tests.fakes import BlankAvatarModel, fake_engines
from tools.avatar_library import AvatarError, AvatarLimits, list_avatars, remove_avatar
from tools.avatar_prepare import ensure_default_avatar, prepare_avatar


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
        "truncated": _write(d / "cut.jpg", _jpeg(a)[:20_000]),
        "truncated-noext": _write(d / "cut", _jpeg(a)[:20_000]),
    }


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


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
    from models.avatar.model import PhotoAvatarModel

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
        ("text", None, {}, "could not be decoded as an image"),
        ("text", "photo", {}, "could not be decoded as an image"),
        ("text", "video", {}, "could not be decoded as a video"),
        ("truncated", None, {}, "cut.jpg could not be decoded as an image"),
        ("truncated-noext", None, {}, "could not be decoded as an image"),
        ("truncated", "photo", {}, "could not be decoded as an image"),
        ("truncated", "video", {}, "could not be decoded as a video"),
        ("gray", "photo", {}, "no face"),
        ("two", "photo", {}, "2 faces"),
        ("small", "photo", {}, "too small"),
        ("clip", "video", {"max_clip_seconds": 1.0}, "too long"),
        ("photo", "photo", {"max_upload_mb": 0.01}, "too large"),
        ("clip", "video", {"max_upload_mb": 0.01}, "too large"),
        ("photo", "video", {}, "is a photo, not a video"),
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


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("anne\n", "000A"),
        ("an\nne", "000A"),
        ("anne\r", "000D"),
        ("an\tne", "0009"),
        ("anne\x00", "0000"),
        ("anne\x7f", "007F"),
        ("anne\x85", "0085"),
    ],
)
def test_names_with_control_characters(sources, tmp_path: Path, name: str, code: str) -> None:
    match = rf"bad avatar name .*: it contains a control character \(U\+{code}\)"
    with pytest.raises(AvatarError, match=match):
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
    assert cli.main(["avatar", "add", "anne\n", "--photo", str(sources["photo"])]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bad avatar name 'anne\\n': it contains a control character")
    assert "\n" not in err
    assert cli.main(["avatar", "add", "cut", "--photo", str(sources["truncated"])]) == 1
    assert "cut.jpg could not be decoded as an image" in capsys.readouterr().err
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


API_KEY = "test-api-key"


class FakeClock:
    """JobTable's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def avatars_app(tmp_path: Path, clock: FakeClock) -> FastAPI:
    """A small app with the avatars router and the API key set."""
    config = load_config()
    config.weights_dir = tmp_path
    config.avatars.max_upload_mb = 1.0
    engines = fake_engines()
    engines.avatar = FolderAvatarModel(tmp_path / "avatars")
    app = FastAPI()
    app.include_router(avatars_router)
    app.state.manager = SimpleNamespace(config=config, engines=engines)
    app.state.api_key = API_KEY
    app.state.avatar_jobs = JobTable(ttl_s=600.0, max_finished=3, clock=clock)
    return app


@pytest.fixture
def api(avatars_app: FastAPI, tmp_path: Path):
    """A client of ``avatars_app`` that sends the API key."""
    with TestClient(avatars_app, headers=AUTH) as client:
        yield client, avatars_app.state.manager.engines.avatar, tmp_path / "avatars"


def upload(client: TestClient, name: str, path: Path, **extra: str):
    with open(path, "rb") as f:
        return client.post(
            "/api/avatars", data={"name": name, **extra}, files={"file": (path.name, f)}
        )


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

    r = post("cut", "truncated")
    assert r.status_code == 400
    assert r.json()["detail"].startswith("x could not be decoded as an image")
    r = post("cut", "truncated", kind="photo")
    assert r.status_code == 400 and "could not be decoded as an image" in r.json()["detail"]
    for name in ("anne\n", "an\rne", "an\tne"):
        r = post(name, "photo")
        assert r.status_code == 400 and "control character" in r.json()["detail"]
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


def test_rest_needs_the_api_key_to_change_avatars(api, sources) -> None:
    client, model, root = api
    prepare_avatar("anne", sources["photo"], None, root)
    for credential, status in [(None, 401), ("Bearer wrong-key", 403), ("Basic abc", 401)]:
        headers = {"Authorization": credential or ""}
        with open(sources["photo"], "rb") as f:
            r = client.post(
                "/api/avatars",
                data={"name": "bob"},
                files={"file": ("me.png", f)},
                headers=headers,
            )
        assert r.status_code == status, r.text
        assert client.delete("/api/avatars/anne", headers=headers).status_code == status
        assert client.get("/api/avatars/anne/progress", headers=headers).status_code == status
        # The list stays open.
        r = client.get("/api/avatars", headers=headers)
        assert r.status_code == 200 and "anne" in [a["name"] for a in r.json()]
    assert client.get("/api/avatars/bob/progress").status_code == 404  # nothing was started
    assert [i.name for i in list_avatars(root)] == ["anne"]


def test_rest_jobs_expire(api, sources, clock: FakeClock) -> None:
    """Finished and failed uploads are kept 10 minutes, and only the newest 3."""
    client, model, root = api
    for name in ("one", "two", "three", "four"):
        assert upload(client, name, sources["gray"]).status_code == 400
        clock.now += 1.0
    assert client.get("/api/avatars/one/progress").status_code == 404  # beyond the newest 3
    for name in ("two", "three", "four"):
        assert client.get(f"/api/avatars/{name}/progress").json()["state"] == "error"
    assert upload(client, "anne", sources["photo"]).status_code == 201
    assert client.get("/api/avatars/two/progress").status_code == 404
    assert client.get("/api/avatars/anne/progress").json()["state"] == "done"
    clock.now += 601.0
    for name in ("three", "four", "anne"):
        assert client.get(f"/api/avatars/{name}/progress").status_code == 404
    assert len(client.app.state.avatar_jobs) == 0
    assert [i.name for i in list_avatars(root)] == ["anne"]


def test_job_table_keeps_running_jobs() -> None:
    clock = FakeClock()
    jobs = JobTable(ttl_s=10.0, max_finished=1, clock=clock)
    running = jobs.start("slow")
    failed = jobs.start("bad")
    jobs.finish(failed, "no face found")
    done = jobs.start("good")
    jobs.finish(done)
    clock.now += 3600.0
    assert jobs.get("bad") is None and jobs.get("good") is None
    assert jobs.get("slow") is running and [j.name for j in jobs.running()] == ["slow"]
    assert jobs.start("good").state == "running"  # a name can be uploaded again


async def test_rest_job_ends_when_the_client_leaves(
    avatars_app: FastAPI, sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preparation thread cannot be stopped: the job stays running while it
    works, then ends (and can expire) instead of staying "running" forever."""
    started, release = threading.Event(), threading.Event()

    def slow_prepare(*args: object, **kwargs: object) -> None:
        started.set()
        release.wait(10.0)
        raise AvatarError("no face found in the photo")

    monkeypatch.setattr(avatars_api, "prepare_avatar", slow_prepare)
    jobs: JobTable = avatars_app.state.avatar_jobs
    transport = httpx.ASGITransport(app=avatars_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as client:
        post = asyncio.create_task(
            client.post(
                "/api/avatars",
                data={"name": "slow"},
                files={"file": ("me.png", sources["photo"].read_bytes())},
            )
        )
        assert await asyncio.to_thread(started.wait, 10.0)
        post.cancel()  # the client left
        with contextlib.suppress(asyncio.CancelledError):
            await post
        assert jobs.get("slow").state == "running"
        release.set()
        for _ in range(500):
            if jobs.get("slow").state != "running":
                break
            await asyncio.sleep(0.01)
        r = await client.get("/api/avatars/slow/progress")
    assert r.json()["state"] == "error" and r.json()["error"] == "no face found in the photo"
