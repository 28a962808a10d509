"""`make soak` / `python -m bench.soak`: soak and load against one fresh server.

One server (bench/launch.py: real models, loopback only), three parts:

1. **cycles**: connect/disconnect cycles of an aiortc client (hang up with
   DELETE or drop the peer connection like a closed tab, alternately; every
   fifth cycle, the first too, leaves in the middle of a typed question's
   reply). The server process's RSS, threads and fds (/proc), and its
   asyncio tasks and objects (counted by a probe the soak puts on the
   server's PYTHONPATH, see PROBE), after the first cycle and after the
   last; then what a full gc.collect() and malloc_trim(0) give back; its log
   searched for pending tasks that were destroyed.
2. **conversation**: one session for N minutes with a spoken question
   (tests/fixtures/question_{en,zh}.wav, alternately) every T seconds; A/V
   drift at the client from the RTP timestamps against arrival, and the same
   on the decoded frames and on the RTCP sender reports (``av_offset_series``,
   ``drift``); RSS along the way.
3. **overload**: twice the server's capacity offered at once; every extra
   offer must get 503 with Retry-After and a message (none may hang), the
   refused clients keep offering while the admitted sessions answer a spoken
   question each, at 25 fps.

Writes bench/results/soak.md and soak.json; ``--docs`` also puts the markdown
into docs/benchmarks.md as its "Soak and load" section (nothing else there
changes).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from aiortc.rtp import RtcpSrPacket

from bench.__main__ import ask, proc_stats, server_machine, server_pacing
from bench.analysis import FIRST_AUDIO_P50, LOUD_RMS, MAX_FRAME_GAP, MIN_FPS, pct
from bench.client import Busy, Client, read_wav, to_48k
from bench.launch import REPO, running_server
from evals.report import machine, splice_heading
from server.rtc import offer_loopback_only

SECTION = "## Soak and load"
RESULTS = REPO / "bench" / "results"
DOCS_OUT = REPO / "docs" / "benchmarks.md"

# The targets.
MAX_RSS_GROWTH_PCT = 5.0
MAX_DRIFT_S = 0.040

AUDIO_RATE = 48_000  # Opus RTP clock
VIDEO_RATE = 90_000  # VP8 RTP clock
DRIFT_BIN_S = 10.0
DRIFT_WINDOW_S = 60.0  # compared at the start and at the end of the conversation
DRIFT_SKIP_S = 5.0  # connection set-up, first keyframe

# tests/fixtures/question_*.wav (tests/make_fixtures.py QUESTIONS): 0.3 s of
# silence, the question, 1.0 s of silence.
FIXTURE_QUESTIONS = {
    "en": ("question_en.wav", "What is the capital of France?"),
    "zh": ("question_zh.wav", "今天天气怎么样？"),
}
FIXTURE_TAIL_S = 1.0
CYCLE_QUESTION = "Tell me a fun fact about the moon."
CYCLE_MEDIA_FRAMES = 10  # video frames a cycle waits for before leaving
OFFER_TIMEOUT_S = 40.0  # an offer not answered by then "hung"
RETRY_EVERY_S = 2.0  # refused clients offer again this often during the overload
OBJECTS_SHOWN = 12  # object types listed in the report
CENSUSES = ("census_fresh", "census_before", "census_after")  # of the cycles

PROBE_ENV = "VIDEOCHAT_SOAK_PROBE"
# What lives inside the server is visible only from inside its process. This
# module, on the server's PYTHONPATH as sitecustomize, answers two signals in
# the loop's thread (between two bytecodes): SIGUSR1 writes census.json (the
# asyncio tasks by coroutine, and after a gc.collect() the objects gc tracks
# by type, and those the collection freed, the garbage); SIGUSR2 calls
# glibc's malloc_trim(0), which hands freed heap back
# to the system, and writes trimmed.json. At start it writes "ready", so the
# soak never sends a signal (whose default action kills) to a server without it.
PROBE = '''\
"""bench/soak.py's probe (see PROBE there); nothing else."""
import asyncio
import collections
import ctypes
import gc
import json
import os
import signal
import time

FOLDER = os.environ.get("VIDEOCHAT_SOAK_PROBE")


def _write(name, data):
    path = os.path.join(FOLDER, name)
    with open(path + ".tmp", "w") as out:
        json.dump(data, out)
    os.replace(path + ".tmp", path)


def _types():
    return collections.Counter(
        f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects()
    )


def _census(signum, frame):
    loop = asyncio.events._get_running_loop()
    tasks = asyncio.all_tasks(loop) if loop is not None else set()
    coros = [t.get_coro() for t in tasks]
    before = _types()
    started = time.perf_counter()
    gc.collect()
    seconds = time.perf_counter() - started
    objects = _types()
    _write(
        "census.json",
        {
            "tasks": collections.Counter(
                getattr(c, "__qualname__", type(c).__name__) for c in coros
            ),
            "objects": objects,
            "garbage": before - objects,
            "gc_seconds": seconds,
        },
    )


def _trim(signum, frame):
    _write("trimmed.json", {"released": ctypes.CDLL("libc.so.6").malloc_trim(0)})


if FOLDER:
    signal.signal(signal.SIGUSR1, _census)
    signal.signal(signal.SIGUSR2, _trim)
    open(os.path.join(FOLDER, "ready"), "w").close()
'''
LOG_PROBLEMS = {
    "pending tasks destroyed": "Task was destroyed but it is pending!",
    "task exceptions never retrieved": "Task exception was never retrieved",
    "tracebacks": "Traceback (most recent call last)",
}


# ------------------------------------------------------------ pure measures
def growth_percent(before: float, after: float) -> float:
    """How much ``after`` exceeds ``before``, in percent of ``before``."""
    return 100.0 * (after - before) / before if before > 0 else float("nan")


def per_cycle_slope(values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against their index (units per
    cycle): a steady leak shows here even when the total is small."""
    if len(values) < 2:
        return float("nan")
    return float(np.polyfit(np.arange(len(values)), np.asarray(values, dtype=float), 1)[0])


def increases(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The names counted more often ``after`` than ``before`` (coroutines of
    live tasks, types of live objects), and by how much, largest first."""
    grown = {name: count - before.get(name, 0) for name, count in after.items()}
    return {
        name: more
        for name, more in sorted(grown.items(), key=lambda item: (-item[1], item[0]))
        if more > 0
    }


def log_problems(text: str) -> dict[str, int]:
    """How often each of LOG_PROBLEMS' lines occurs in a server log."""
    return {name: text.count(line) for name, line in LOG_PROBLEMS.items()}


def clock_offsets(stamps: Sequence[tuple[float, int]], rate: int) -> tuple[np.ndarray, np.ndarray]:
    """One stream's (arrival s, RTP timestamp) pairs as (arrival times,
    arrival minus media time): the media clock as received. RTP timestamps
    are 32-bit and start anywhere, so they are unwrapped first."""
    if not stamps:
        return np.zeros(0), np.zeros(0)
    arrival = np.array([t for t, _ in stamps], dtype=float)
    media = np.unwrap(np.array([ts for _, ts in stamps], dtype=float), period=2.0**32) / rate
    return arrival, arrival - media


def av_offset_series(
    audio: Sequence[tuple[float, int]],
    video: Sequence[tuple[float, int]],
    levels: Sequence[tuple[float, float]] = (),
    bin_s: float = DRIFT_BIN_S,
) -> list[dict[str, float]]:
    """Per ``bin_s`` of arrival where both streams have samples: ``t`` (bin
    start, s from the first arrival), ``audio`` and ``video`` (median arrival
    minus media time of each stream), ``offset`` (audio minus video) and
    ``loud`` (share of the received audio frames, ``levels`` = (arrival, rms),
    that are reply speech; NaN without levels). The server stamps both
    streams from one frame counter, so in sync ``offset`` is a constant (set
    by the random RTP origins); how it moves is how far audio moved against
    video on the way to the client."""
    audio_t, audio_off = clock_offsets(audio, AUDIO_RATE)
    video_t, video_off = clock_offsets(video, VIDEO_RATE)
    if not audio_t.size or not video_t.size:
        return []
    level_t = np.array([t for t, _ in levels], dtype=float)
    loud = np.array([rms > LOUD_RMS for _, rms in levels], dtype=bool)
    start = min(audio_t[0], video_t[0])
    end = max(audio_t[-1], video_t[-1])
    series = []
    for left in np.arange(start, end, bin_s):
        a = audio_off[(audio_t >= left) & (audio_t < left + bin_s)]
        v = video_off[(video_t >= left) & (video_t < left + bin_s)]
        if not a.size or not v.size:
            continue
        heard = loud[(level_t >= left) & (level_t < left + bin_s)]
        a_med, v_med = float(np.median(a)), float(np.median(v))
        series.append(
            {
                "t": float(left - start),
                "audio": a_med,
                "video": v_med,
                "offset": a_med - v_med,
                "loud": float(heard.mean()) if heard.size else float("nan"),
            }
        )
    return series


def window_change(
    times: Sequence[float], values: Sequence[float], window_s: float, skip_s: float = 0.0
) -> float:
    """Median of ``values`` in the last ``window_s`` of ``times`` minus their
    median in the first ``window_s`` after ``skip_s``; NaN without samples."""
    t = np.asarray(times, dtype=float)
    v = np.asarray(values, dtype=float)
    if not t.size:
        return float("nan")
    first = v[(t >= t[0] + skip_s) & (t < t[0] + skip_s + window_s)]
    last = v[t > t[-1] - window_s]
    if not first.size or not last.size:
        return float("nan")
    return float(np.median(last) - np.median(first))


def drift(series: Sequence[dict[str, float]], window_s: float = DRIFT_WINDOW_S) -> dict[str, float]:
    """A/V drift over a conversation from ``av_offset_series``, in seconds:
    ``drift`` is the change of the A/V offset from its first ``window_s``
    (after DRIFT_SKIP_S of set-up) to its last (positive: audio now arrives
    later against its picture than at the start); ``excursion`` the largest
    distance of any bin from that start; ``audio_delay`` / ``video_delay``
    how much later each stream arrives against its own media clock at the
    end than at the start (both grow alike when the server's clock falls
    behind and re-anchors)."""
    times = [b["t"] for b in series]
    result = {
        "drift": window_change(times, [b["offset"] for b in series], window_s, DRIFT_SKIP_S),
        "excursion": float("nan"),
        "audio_delay": window_change(times, [b["audio"] for b in series], window_s, DRIFT_SKIP_S),
        "video_delay": window_change(times, [b["video"] for b in series], window_s, DRIFT_SKIP_S),
        "seconds": times[-1] + DRIFT_BIN_S if times else 0.0,
    }
    start = [b["offset"] for b in series if DRIFT_SKIP_S <= b["t"] < DRIFT_SKIP_S + window_s]
    if start:
        reference = float(np.median(start))
        result["excursion"] = max(abs(b["offset"] - reference) for b in series)
    return result


def splice_section(document: str, heading: str, section: str) -> str:
    """``document`` with its ``heading`` section replaced by ``section``
    (appended when it has none); the other sections are left as they are."""
    return splice_heading(document, heading, section.strip() + "\n")


# ------------------------------------------------------------ the server side
def process_snapshot(pid: int) -> dict[str, float]:
    """RSS (bytes), threads and open fds of a process, from /proc."""
    fields = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    return {
        "rss": int(fields["VmRSS"].split()[0]) * 1024,
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "load": os.getloadavg()[0],  # the machine's, for contention
    }


class ServerProbe:
    """Asks the server's PROBE for its tasks and objects, or to trim its heap."""

    def __init__(self, folder: Path) -> None:
        (folder / "sitecustomize.py").write_text(PROBE, encoding="utf-8")
        self.folder = folder
        self.pid: int | None = None

    def env(self) -> dict[str, str]:
        paths = [str(self.folder), os.environ.get("PYTHONPATH", "")]
        return {"PYTHONPATH": os.pathsep.join(p for p in paths if p), PROBE_ENV: str(self.folder)}

    @property
    def installed(self) -> bool:
        return (self.folder / "ready").exists()

    async def _ask(self, sig: signal.Signals, name: str, timeout: float) -> Any:
        if self.pid is None or not self.installed:
            return None
        path = self.folder / name
        path.unlink(missing_ok=True)
        os.kill(self.pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                return json.loads(path.read_text())
            await asyncio.sleep(0.1)
        return None

    async def census(self, timeout: float = 30.0) -> dict[str, dict[str, int]] | None:
        """{"tasks": live asyncio tasks by coroutine, "objects": objects by
        type after a full collection, "garbage": those it freed, "gc_seconds":
        how long it took}; None without the probe or an answer."""
        return await self._ask(signal.SIGUSR1, "census.json", timeout)

    async def trim(self, timeout: float = 30.0) -> bool:
        """malloc_trim(0) in the server: True once done."""
        return await self._ask(signal.SIGUSR2, "trimmed.json", timeout) is not None


async def sessions_listed(base: str, api_key: str) -> int:
    """Sessions live or waiting by GET /api/sessions (API key)."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{base}/api/sessions", headers=bearer(api_key))
    response.raise_for_status()
    return len(response.json())


async def wait_no_sessions(base: str, timeout: float = 60.0) -> float:
    """Seconds until /health counts no live session (``timeout`` + 1 if never).
    /health, not /api/sessions: the API is rate-limited per address."""
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=10) as http:
        while time.perf_counter() - start < timeout:
            if (await http.get(f"{base}/health")).json()["sessions"] == 0:
                return time.perf_counter() - start
            await asyncio.sleep(0.1)
    return timeout + 1


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ------------------------------------------------------------ the client side
class StampedTrack:
    """A received track that notes (arrival, pts) of every frame it hands on."""

    def __init__(self, track: Any, stamps: list[tuple[float, int]]) -> None:
        self.track = track
        self.stamps = stamps

    async def recv(self) -> Any:
        frame = await self.track.recv()
        if frame.pts is not None:
            self.stamps.append((time.perf_counter(), int(frame.pts)))
        return frame


class StampingClient(Client):
    """The bench client, also keeping the media clocks as received: per RTP
    packet (audio) and per video frame's last packet (arrival, RTP
    timestamp); per decoded frame (arrival, pts: the RTP timestamp too); per
    RTCP sender report (the server's wall clock when it sent the stream's
    last packet, NTP seconds; that packet's RTP timestamp)."""

    def __init__(self, base_url: str, lang: str = "auto") -> None:
        super().__init__(base_url, lang=lang)
        self.rtp: dict[str, list[tuple[float, int]]] = {"audio": [], "video": []}
        self.decoded: dict[str, list[tuple[float, int]]] = {"audio": [], "video": []}
        self.reports: dict[str, list[tuple[float, int]]] = {"audio": [], "video": []}

    def _stamp_video_packets(self) -> None:
        super()._stamp_video_packets()
        # The same private hooks of aiortc 1.16's RTCRtpReceiver as the base
        # class uses (_handle_rtp_packet, and _handle_rtcp_packet), both kinds.
        for transceiver in self.pc.getTransceivers():
            receiver = transceiver.receiver
            if not hasattr(receiver, "_handle_rtp_packet"):
                continue
            handle_rtp, handle_rtcp = receiver._handle_rtp_packet, receiver._handle_rtcp_packet
            stamps, reports = self.rtp[transceiver.kind], self.reports[transceiver.kind]
            every = transceiver.kind == "audio"  # one Opus packet per frame

            async def rtp(packet, arrival_time_ms, _h=handle_rtp, _s=stamps, _every=every):  # type: ignore[no-untyped-def]
                if _every or packet.marker:
                    _s.append((time.perf_counter(), packet.timestamp))
                await _h(packet, arrival_time_ms)

            async def rtcp(packet, _h=handle_rtcp, _r=reports):  # type: ignore[no-untyped-def]
                if isinstance(packet, RtcpSrPacket):
                    info = packet.sender_info
                    _r.append((info.ntp_timestamp / 2**32, info.rtp_timestamp))
                await _h(packet)

            receiver._handle_rtp_packet = rtp  # type: ignore[method-assign]
            receiver._handle_rtcp_packet = rtcp  # type: ignore[method-assign]

    async def _read_audio(self, track: Any) -> None:
        await super()._read_audio(StampedTrack(track, self.decoded["audio"]))

    async def _read_video(self, track: Any) -> None:
        await super()._read_video(StampedTrack(track, self.decoded["video"]))


async def drop(client: Client) -> None:
    """Leave without hanging up, like a closed tab: the peer connection
    closes, no DELETE; the server must notice by itself."""
    for task in client._tasks:
        task.cancel()
    await client.pc.close()


async def hang_up(client: Client) -> int | None:
    """Hang up as an app would: DELETE /api/sessions/{id} with the session's
    own token first (the server ends it, "deleted"), then close the peer.
    (Client.close closes the peer first, which already ends the session.)
    The DELETE's status, None without a session."""
    status = None
    if client.session_id:
        async with httpx.AsyncClient(timeout=10) as http:
            url = f"{client.base_url}/api/sessions/{client.session_id}"
            status = (await http.delete(url, headers=client.auth)).status_code
    await drop(client)
    return status


async def wait_media(client: Client, frames: int, timeout: float = 30.0) -> None:
    deadline = time.perf_counter() + timeout
    while len(client.received.video_times) < frames or not client.received.audio:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"fewer than {frames} video frames in {timeout} s")
        await asyncio.sleep(0.05)


def fixture_prompts() -> dict[str, tuple[str, np.ndarray, float]]:
    """bench.ask's prompts from the spoken-question fixtures."""
    prompts = {}
    for lang, (name, text) in FIXTURE_QUESTIONS.items():
        pcm, rate = read_wav(REPO / "tests" / "fixtures" / name)
        prompts[lang] = (text, to_48k(pcm, rate), pcm.size / rate - FIXTURE_TAIL_S)
    return prompts


# ------------------------------------------------------------------ cycles
async def one_cycle(base: str, index: int) -> dict[str, Any]:
    """Connect, take some media (and, every fifth cycle, start a reply), leave."""
    mode = "hang up" if index % 2 == 0 else "drop"
    mid_reply = index % 5 == 0  # the first too: its turn warms what turns use
    row: dict[str, Any] = {"cycle": index, "mode": mode, "mid_reply": mid_reply}
    client = Client(base, lang="auto")
    start = time.perf_counter()
    try:
        await client.connect()
        row["connect_s"] = time.perf_counter() - start
        await wait_media(client, CYCLE_MEDIA_FRAMES)
        row["media_s"] = time.perf_counter() - start
        if mid_reply:
            seen = len(client.received.events)
            client.send({"type": "text", "text": CYCLE_QUESTION})
            await client.wait_for(lambda e: e["type"] == "bot_text", 90, since=seen)
            await asyncio.sleep(1.0)  # leave while it speaks
    except Exception as exc:  # noted in the row; the soak goes on
        row["error"] = repr(exc)[:300]
    finally:
        left = time.perf_counter()
        if mode == "hang up":
            row["delete_status"] = await hang_up(client)
        else:
            await drop(client)
        row["gone_s"] = await wait_no_sessions(base)
        row["left_s"] = time.perf_counter() - left
    return row


async def run_cycles(
    base: str,
    api_key: str,
    pid: int,
    probe: ServerProbe,
    cycles: int,
    collect_each: bool = False,
    settle_s: float = 10.0,  # past uvicorn's 5 s keep-alive of our HTTP connections
) -> dict[str, Any]:
    """``cycles`` cycles; the baseline is taken after the first (its first-use
    allocations are not a leak), the end ``settle_s`` after the last.
    ``collect_each``: after every cycle the probe runs a full gc.collect()
    and malloc_trim(0) in the server (a diagnostic: what doing so after each
    session would keep)."""
    result: dict[str, Any] = {
        "cycles": cycles,
        "rows": [],
        "snapshots": {},
        "collect_each": collect_each,
    }
    result["snapshots"]["fresh server"] = process_snapshot(pid)
    result["census_fresh"] = await probe.census()
    cpu0 = proc_stats(pid)[0]
    wall0 = time.perf_counter()
    for index in range(cycles):
        row = await one_cycle(base, index)
        if collect_each:
            await probe.census()
            await probe.trim()
        row.update(process_snapshot(pid))
        result["rows"].append(row)
        print(
            f"[cycle {index + 1}/{cycles}] {row['mode']}{' mid-reply' if row['mid_reply'] else ''}"
            f": connected {row.get('connect_s', float('nan')):.2f} s, gone "
            f"{row['gone_s']:.2f} s after leaving; RSS {row['rss'] / 2**20:.0f} MiB, "
            f"{row['threads']} threads, {row['fds']} fds"
            + (f"; {row['error']}" if "error" in row else ""),
            flush=True,
        )
        if index == 0:
            await asyncio.sleep(settle_s)
            result["snapshots"]["after the first cycle"] = process_snapshot(pid)
            result["census_before"] = await probe.census()
    await asyncio.sleep(settle_s)
    result["snapshots"][f"{settle_s:.0f} s after the last cycle"] = process_snapshot(pid)
    result["census_after"] = await probe.census()
    if result["census_before"] and result["census_after"]:
        result["census_after"]["grown"] = increases(
            result["census_before"]["objects"], result["census_after"]["objects"]
        )
    if await probe.trim():  # after the census's gc.collect(): what is still held
        await asyncio.sleep(1.0)
        result["snapshots"]["then after gc.collect() and malloc_trim(0)"] = process_snapshot(pid)
    result["listed_after"] = await sessions_listed(base, api_key)
    result["cpu_s"] = proc_stats(pid)[0] - cpu0
    result["wall_s"] = time.perf_counter() - wall0
    return result


# ------------------------------------------------------------ conversation
async def run_conversation(
    base: str, pid: int, minutes: float, every_s: float, prompts: dict
) -> dict[str, Any]:
    """One session for ``minutes``; a spoken question every ``every_s`` (or
    as soon as the last reply ended, when it took longer)."""
    client = StampingClient(base, lang="auto")
    await client.connect()
    start = time.perf_counter()
    end = start + 60.0 * minutes
    rows: list[dict[str, Any]] = []
    samples: list[dict[str, float]] = [{"t": 0.0, **process_snapshot(pid)}]
    pacing0 = server_pacing(base)
    cpu0 = proc_stats(pid)[0]
    try:
        await asyncio.sleep(2.0)  # let the video settle
        turn = 0
        while time.perf_counter() < end - 1.0:
            lang = ("en", "zh")[turn % 2]
            asked = time.perf_counter()
            try:
                row = await ask(client, lang, "conversation", prompts[lang])
                row.pop("_mouth", None)  # crops: the mouth search is not part of the soak
            except TimeoutError as exc:
                row = {"lang": lang, "error": str(exc)[:200]}
                print(f"[conversation] turn {turn + 1} timed out", flush=True)
            row["at_s"] = asked - start
            rows.append(row)
            samples.append({"t": time.perf_counter() - start, **process_snapshot(pid)})
            turn += 1
            wait = min(asked + every_s, end) - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
    finally:
        wall = time.perf_counter() - start
        await client.close()
    pacing1 = server_pacing(base)
    levels = client.received.audio
    series = av_offset_series(client.rtp["audio"], client.rtp["video"], levels)
    decoded = av_offset_series(client.decoded["audio"], client.decoded["video"], levels)
    # The server's own account: its send time of each media time (what a
    # browser aligns the streams by). Binned by the server's clock.
    reported = av_offset_series(client.reports["audio"], client.reports["video"])
    window = min(DRIFT_WINDOW_S, wall / 4)
    return {
        "minutes": minutes,
        "every_s": every_s,
        "wall_s": wall,
        "cpu_s": proc_stats(pid)[0] - cpu0,
        "rows": rows,
        "samples": samples,
        "late_frames": pacing1.get("late", float("nan")) - pacing0.get("late", float("nan")),
        "server_max_gap": pacing1.get("max_gap", float("nan")),
        "window_s": window,
        "rtp": drift(series, window),
        "decoded": drift(decoded, window),
        "reported": drift(reported, window),
        "series": series,
        "decoded_series": decoded,
        "reported_series": reported,
        "packets": {kind: len(stamps) for kind, stamps in client.rtp.items()},
        "sender_reports": {kind: len(r) for kind, r in client.reports.items()},
    }


# ----------------------------------------------------------------- overload
def refusal(busy: Busy) -> dict[str, Any]:
    """A 503's outcome: "refused" when it says when to retry and why."""
    clean = bool(busy.retry_after) and bool(busy.message)
    return {
        "outcome": "refused" if clean else "refused without Retry-After or message",
        "retry_after": busy.retry_after,
        "message": busy.message,
    }


async def offer_once(client: Client, timeout: float = OFFER_TIMEOUT_S) -> dict[str, Any]:
    """Offer and classify the answer: admitted, refused (503 with Retry-After
    and a message), refused otherwise, hung or error."""
    start = time.perf_counter()
    outcome: dict[str, Any] = {}
    try:
        await asyncio.wait_for(client.connect(), timeout)
        outcome["outcome"] = "admitted"
    except Busy as exc:
        outcome = refusal(exc)
    except httpx.HTTPStatusError as exc:
        outcome.update(outcome=f"refused with {exc.response.status_code}", message=str(exc)[:200])
    except TimeoutError:
        outcome["outcome"] = "hung"
    except Exception as exc:
        outcome.update(outcome="error", message=repr(exc)[:200])
    outcome["seconds"] = time.perf_counter() - start
    return outcome


async def offer_again(http: httpx.AsyncClient, base: str, body: dict[str, Any]) -> dict[str, Any]:
    """A refused client's offer, posted again as it was (no new peer
    connection on our side: the soak's own CPU stays with the admitted
    sessions); classified as ``offer_once`` does. One let in is hung up."""
    start = time.perf_counter()
    try:
        response = await http.post(f"{base}/offer", json=body, timeout=OFFER_TIMEOUT_S)
    except httpx.TimeoutException:
        return {"outcome": "hung", "seconds": time.perf_counter() - start}
    except httpx.HTTPError as exc:
        return {"outcome": "error", "message": repr(exc)[:200], "seconds": 0.0}
    seconds = time.perf_counter() - start
    if response.status_code == 503:
        return {**refusal(Busy(response)), "seconds": seconds}
    if response.status_code == 200:
        answer = response.json()
        await http.delete(
            f"{base}/api/sessions/{answer['session_id']}", headers=bearer(answer["token"])
        )
        return {"outcome": "admitted", "seconds": seconds}
    return {"outcome": f"refused with {response.status_code}", "seconds": seconds}


def reply_holds(row: dict[str, Any]) -> bool:
    """An admitted session's reply under overload: answered, at 25 fps (the
    bench's every-reply >= 24.5 fps)."""
    return "error" not in row and bool(row.get("bot")) and row["fps"] >= MIN_FPS


async def run_overload(base: str, capacity: int, prompts: dict) -> dict[str, Any]:
    """Twice ``capacity`` offers at once; the refused ones offer again every
    RETRY_EVERY_S while each admitted session answers a spoken question."""
    offers = 2 * capacity
    pacing0 = server_pacing(base)
    start = time.perf_counter()
    clients = [Client(base, lang="auto") for _ in range(offers)]
    first = await asyncio.gather(*(offer_once(c) for c in clients))
    admitted = [c for c, o in zip(clients, first, strict=True) if o["outcome"] == "admitted"]
    bodies = [
        {"sdp": c.pc.localDescription.sdp, "type": "offer", "lang": "auto"}
        for c, o in zip(clients, first, strict=True)
        if o["outcome"] != "admitted" and c.pc.localDescription is not None
    ]
    for client, outcome in zip(clients, first, strict=True):
        if outcome["outcome"] != "admitted":
            await client.close()
    print(
        f"[overload] {offers} offers at once: "
        + ", ".join(f"{o['outcome']} in {o['seconds']:.2f} s" for o in first),
        flush=True,
    )
    retries: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def keep_offering() -> None:
        async with httpx.AsyncClient() as http:
            while not done.is_set():
                retries.extend(
                    await asyncio.gather(*(offer_again(http, base, body) for body in bodies))
                )
                try:
                    await asyncio.wait_for(done.wait(), RETRY_EVERY_S)
                except TimeoutError:
                    pass

    rows: list[dict[str, Any]] = []
    try:
        await asyncio.sleep(2.0)  # let the video settle
        retrier = asyncio.create_task(keep_offering())
        langs = [("en", "zh")[i % 2] for i in range(len(admitted))]
        try:
            results = await asyncio.gather(
                *(
                    ask(c, lang, "overload", prompts[lang])
                    for c, lang in zip(admitted, langs, strict=True)
                ),
                return_exceptions=True,
            )
        finally:
            done.set()
            await retrier
        for lang, result in zip(langs, results, strict=True):
            if isinstance(result, BaseException):
                rows.append({"lang": lang, "error": repr(result)[:200]})
            else:
                result.pop("_mouth", None)
                rows.append(result)
    finally:
        for client in admitted:
            await client.close()
    pacing1 = server_pacing(base)
    wall = time.perf_counter() - start
    gone = await wait_no_sessions(base)
    after = Client(base, lang="auto")
    reopened = await offer_once(after)
    await after.close()
    print(
        f"[overload] {len(retries)} further offers while the admitted sessions answered: "
        f"{sum(r['outcome'] == 'refused' for r in retries)} refused cleanly; after they left "
        f"a new offer was {reopened['outcome']}",
        flush=True,
    )
    return {
        "capacity": capacity,
        "offers": offers,
        "first": first,
        "retries": retries,
        "rows": rows,
        "gone_s": gone,
        "reopened": reopened,
        "wall_s": wall,
        "late_frames": pacing1.get("late", float("nan")) - pacing0.get("late", float("nan")),
        "server_max_gap": (pacing0.get("max_gap"), pacing1.get("max_gap")),
    }


def overload_verdict(result: dict[str, Any]) -> tuple[bool, bool]:
    """(exactly ``capacity`` admitted, every other offer refused cleanly, a
    new offer admitted once they left; every admitted session held)."""
    outcomes = [o["outcome"] for o in result["first"]]
    refused_clean = (
        outcomes.count("admitted") == result["capacity"]
        and outcomes.count("refused") == result["offers"] - result["capacity"]
        and all(r["outcome"] == "refused" for r in result["retries"])
        and result["reopened"]["outcome"] == "admitted"
    )
    kept = bool(result["rows"]) and all(reply_holds(r) for r in result["rows"])
    return refused_clean, kept


# ------------------------------------------------------------------- report
def _mib(value: float) -> str:
    return f"{value / 2**20:.0f} MiB"


def _ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{1000 * seconds:+.1f} ms"


def _status(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "**not met**")


def _task_text(
    before: dict[str, int] | None, after: dict[str, int] | None
) -> tuple[str, bool | None]:
    if before is None or after is None:
        return "not measured (no task probe)", None
    extra = increases(before, after)
    text = f"{sum(before.values())} before, {sum(after.values())} after"
    if extra:
        text += "; more of: " + ", ".join(f"{name} +{n}" for name, n in extra.items())
    return text, not extra


def cycles_section(cycles: dict[str, Any], log_counts: dict[str, int]) -> tuple[list, list[str]]:
    """(target rows, markdown lines) of the cycles."""
    # fresh, after the first cycle, after the last, [after gc.collect and trim]
    snaps = list(cycles["snapshots"].items())
    (_, fresh), (base_name, base), (end_name, end) = snaps[:3]
    collected = snaps[3][1] if len(snaps) > 3 else None
    rss_growth = growth_percent(base["rss"], end["rss"])
    rows = cycles["rows"]
    slope = per_cycle_slope([r["rss"] for r in rows[1:]])
    census_before, census_after = cycles.get("census_before"), cycles.get("census_after")
    tasks, tasks_ok = _task_text(
        census_before and census_before["tasks"], census_after and census_after["tasks"]
    )
    destroyed = log_counts["pending tasks destroyed"]
    # Pooled keep-alive connections come and go (an fd or two either way): a
    # leak shows as a trend, the per-cycle slope times the cycles.
    thread_trend = per_cycle_slope([r["threads"] for r in rows]) * len(rows)
    fd_trend = per_cycle_slope([r["fds"] for r in rows]) * len(rows)
    targets = [
        (
            f"RSS growth over {cycles['cycles']} connect/disconnect cycles",
            f"< {MAX_RSS_GROWTH_PCT:.0f} %",
            f"{rss_growth:+.2f} % ({_mib(base['rss'])} {base_name} -> {_mib(end['rss'])}; "
            f"{slope / 2**10:+.0f} KiB per cycle; from the fresh server "
            f"{growth_percent(fresh['rss'], end['rss']):+.1f} %"
            + (
                f"; after a full gc.collect() and malloc_trim(0) {_mib(collected['rss'])}, "
                f"{growth_percent(base['rss'], collected['rss']):+.2f} %"
                if collected
                else ""
            )
            + ")",
            rss_growth < MAX_RSS_GROWTH_PCT,
        ),
        ("leftover asyncio tasks after the cycles", "none", tasks, tasks_ok),
        (
            'pending tasks destroyed ("Task was destroyed but it is pending!", server log)',
            "none",
            f"{destroyed}",
            destroyed == 0,
        ),
        (
            "server threads / fds over the cycles",
            "none gained (trend over all cycles < 1)",
            f"threads {base['threads']} -> {end['threads']} (trend {thread_trend:+.1f}), "
            f"fds {base['fds']} -> {end['fds']} (trend {fd_trend:+.1f})",
            thread_trend < 1 and fd_trend < 1,
        ),
    ]
    errors = [r for r in rows if "error" in r]
    gone = [r["gone_s"] for r in rows]
    lines = [
        f"### {cycles['cycles']} connect/disconnect cycles",
        "",
        "Each cycle: an aiortc client connects, receives 10 video frames, and leaves.",
        "Even cycles hang up (DELETE /api/sessions/{id} with the session's token, then",
        "the peer closed); odd ones drop the peer connection without a word (a closed",
        "tab). Every fifth cycle (the first too, so the baseline has seen a turn) leaves",
        f'one second into the reply to a typed question ("{CYCLE_QUESTION}").',
        "The next cycle starts once /health counts no session. Server process from",
        f"/proc; baseline {base_name}, end {end_name}.",
        "",
        "| when | RSS | threads | fds | load average (1 min) |",
        "|---|---|---|---|---|",
    ]
    marks = sorted({len(rows) // 4, len(rows) // 2, 3 * len(rows) // 4} - {0, 1, len(rows)})
    table = [*snaps[:2], *((f"after cycle {m}", rows[m - 1]) for m in marks), *snaps[2:]]
    for name, snap in table:
        lines.append(
            f"| {name} | {_mib(snap['rss'])} | {snap['threads']} | {snap['fds']} "
            f"| {snap['load']:.1f} |"
        )
    if collected and rss_growth >= MAX_RSS_GROWTH_PCT:
        kept = growth_percent(base["rss"], collected["rss"])
        lines += [
            "",
            f"The growth is {'mostly ' if kept > 0 else ''}memory the server no longer uses: "
            f"after a full gc.collect() and malloc_trim(0) (the soak's probe, after the "
            f"measurement) the RSS is {kept:+.2f} % from the baseline. Closed sessions wait "
            "in reference cycles for a full collection (their garbage below), and glibc keeps "
            "the heap they freed.",
        ]
    deletes = Counter(str(r["delete_status"]) for r in rows if "delete_status" in r)
    lines.append("")
    for mode in ("hang up", "drop"):
        sub = [r["gone_s"] for r in rows if r["mode"] == mode]
        if sub:
            lines.append(
                f"Session gone after leaving ({mode}, {len(sub)} cycles): median "
                f"{pct(sub, 50):.2f} s, max {max(sub):.2f} s"
                + (
                    "; DELETE answered " + ", ".join(f"{k} x{n}" for k, n in deletes.items())
                    if mode == "hang up" and deletes
                    else ""
                )
                + "."
            )
    lines += [
        "",
        f"Connect (offer to open data channel): median "
        f"{pct([r.get('connect_s', float('nan')) for r in rows], 50):.2f} s. "
        f"Cycles with an error: {len(errors)}"
        + (f" (first: {errors[0]['error']})" if errors else "")
        + f". Longest wait for the session to go: {max(gone, default=float('nan')):.2f} s; "
        f"sessions GET /api/sessions listed after the last: {cycles.get('listed_after')}. "
        f"Server CPU {cycles['cpu_s']:.0f} s over {cycles['wall_s']:.0f} s.",
        "",
        "Asyncio tasks in the server by coroutine (the soak's probe):",
        "",
        f"- fresh: {_census_text(cycles.get('census_fresh'))}",
        f"- after the first cycle: {_census_text(census_before)}",
        f"- after the last: {_census_text(census_after)}",
    ]
    if census_after and "garbage" in census_after:
        garbage = sorted(census_after["garbage"].items(), key=lambda item: -item[1])
        lines += [
            "",
            f"Garbage the server still held after the last cycle (objects a full "
            f"gc.collect() freed, {census_after['gc_seconds']:.2f} s, in the probe), most first: "
            + (", ".join(f"{name} {n}" for name, n in garbage[:OBJECTS_SHOWN]) or "none")
            + ".",
        ]
    if census_after and "grown" in census_after:
        grown = list(census_after["grown"].items())
        lines += [
            "",
            "Python objects (tracked by gc, after a collection) that grew from the first "
            "cycle to the last, most first: "
            + (", ".join(f"{name} +{n}" for name, n in grown[:OBJECTS_SHOWN]) or "none")
            + ".",
        ]
    return targets, lines


def _census_text(census: dict[str, dict[str, int]] | None) -> str:
    if census is None:
        return "not measured"
    tasks = census["tasks"]
    return f"{sum(tasks.values())} (" + ", ".join(f"{k} {v}" for k, v in tasks.items()) + ")"


DRIFT_VIEWS = (
    ("rtp", "RTP packets as they arrive at the client"),
    ("decoded", "decoded frames as the client's tracks hand them on"),
    ("reported", "the server's RTCP sender reports"),
)


def conversation_section(conv: dict[str, Any]) -> tuple[list, list[str]]:
    rows = [r for r in conv["rows"] if "error" not in r]
    failed = len(conv["rows"]) - len(rows)
    samples = conv["samples"]
    minutes = conv["wall_s"] / 60
    targets = []
    for key, view in DRIFT_VIEWS:
        found = conv[key]
        targets.append(
            (
                f"A/V drift over {minutes:.0f} min ({view})",
                f"< {1000 * MAX_DRIFT_S:.0f} ms",
                f"{_ms(found['drift'])} (largest excursion {_ms(found['excursion'])})",
                abs(found["drift"]) < MAX_DRIFT_S if found["drift"] == found["drift"] else None,
            )
        )
    rtp = conv["rtp"]
    fps = [r["fps"] for r in rows]
    first = [r["first_audio"] for r in rows]
    errors = sum(r["errors"] for r in rows)
    words = sum(r["ref_len"] for r in rows)
    window = f"{conv['window_s']:.0f} s"
    lines = [
        f"### A {minutes:.0f}-minute conversation",
        "",
        f"One session; a spoken question every {conv['every_s']:.0f} s (or as soon as the",
        "last reply ended), tests/fixtures/question_en.wav and question_zh.wav in turn,",
        "sent as the client's microphone in real time and measured as `make bench`",
        "measures a reply.",
        "",
        f"- turns: {len(conv['rows'])} ({failed} without a reply in 120 s); first reply audio "
        f"p50 {pct(first, 50):.2f} s, p95 {pct(first, 95):.2f} s; fps during replies median "
        f"{pct(fps, 50):.1f}, min {min(fps, default=float('nan')):.1f}; ASR errors "
        f"{errors} of {words} reference tokens;",
        f"- server RSS {_mib(samples[0]['rss'])} at the start, {_mib(samples[-1]['rss'])} at "
        f"the end ({growth_percent(samples[0]['rss'], samples[-1]['rss']):+.2f} %), peak "
        f"{_mib(max(s['rss'] for s in samples))}; threads {samples[0]['threads']} -> "
        f"{samples[-1]['threads']}, fds {samples[0]['fds']} -> {samples[-1]['fds']};",
        f"- server: {conv['late_frames']:.0f} late frames (its media clock fell more than a "
        f"frame behind, CPU-starved, and re-anchored); CPU {conv['cpu_s']:.0f} s over "
        f"{conv['wall_s']:.0f} s;",
        f"- received: {conv['packets']['audio']} audio packets, {conv['packets']['video']} "
        f"video frames, {conv['sender_reports']['audio']} + {conv['sender_reports']['video']} "
        "sender reports; each stream's arrival against its own media clock moved "
        f"{_ms(rtp['audio_delay'])} (audio) and {_ms(rtp['video_delay'])} (video) from the "
        "first window to the last (the media time skipped by a stalled clock).",
        "",
        "**Drift method.** The server stamps audio (48 kHz) and video (90 kHz) from one",
        "frame counter, so their media clocks are locked at the source. For every",
        "received audio RTP packet and every video frame's last RTP packet, the client",
        "notes its arrival time minus its media time (RTP timestamp, unwrapped, over the",
        f"clock rate). Per {DRIFT_BIN_S:.0f} s of arrival, the median audio value minus the "
        "median video value",
        "is the A/V offset at the client, up to a constant (the streams' random RTP",
        f"origins). The drift is the median of that offset over the last {window} minus its",
        f"median over the first {window} (after {DRIFT_SKIP_S:.0f} s of set-up); positive: "
        "audio now arrives later",
        "against its picture than at the start. The same on the decoded frames (pts",
        "against the moment the client's tracks hand them on, after its jitter buffer and",
        "decoders) is the playout view; on the RTCP sender reports (the server's wall",
        "clock when it sent a stream's last packet, against that packet's RTP timestamp),",
        "it is the mapping a browser aligns audio and video by.",
    ]
    series = conv["series"]
    if series:
        reference = series[0]["offset"]
        step = max(1, len(series) // 12)
        lines += [
            "",
            "A/V offset along the conversation (RTP at the client, ms from the first bin; "
            "share of reply speech in the bin): "
            + ", ".join(
                f"{b['t'] / 60:.1f} min {1000 * (b['offset'] - reference):+.0f} "
                f"({100 * b['loud']:.0f} %)"
                for b in series[::step]
            )
            + ".",
        ]
    return targets, lines


def overload_section(over: dict[str, Any], conv: dict[str, Any] | None) -> tuple[list, list[str]]:
    refused_clean, held = overload_verdict(over)
    first = over["first"]
    refused = [o for o in first if o["outcome"] != "admitted"]
    message = next((o for o in refused if o.get("message")), {})
    retries = over["retries"]
    targets = [
        (
            f"overload ({over['offers']} offers at once, capacity {over['capacity']}): extra "
            "offers refused cleanly",
            "503 + Retry-After + message each, none hangs",
            f"{sum(o['outcome'] == 'admitted' for o in first)} admitted; "
            + ", ".join(f"{o['outcome']} in {o['seconds']:.2f} s" for o in refused)
            + f"; {sum(r['outcome'] == 'refused' for r in retries)} of {len(retries)} further "
            f"offers refused cleanly; after hang-up a new offer: {over['reopened']['outcome']}",
            refused_clean,
        ),
        (
            "overload: admitted sessions hold 25 fps and answer",
            f"answered, every reply >= {MIN_FPS} fps (client)",
            "; ".join(_reply_text(r) for r in over["rows"]) or "no reply",
            held,
        ),
    ]
    gap_before, gap_after = over["server_max_gap"]
    lines = [
        f"### Offered at twice capacity ({over['offers']} offers, capacity {over['capacity']})",
        "",
        f"{over['offers']} aiortc clients offered at once. The refused ones posted their offers",
        f"again every {RETRY_EVERY_S:.0f} s (ignoring Retry-After) while each admitted session "
        "answered one",
        "spoken question; then the admitted sessions hung up and one more offer was made.",
        "",
        f'Refusal: 503, Retry-After {message.get("retry_after")}, "{message.get("message", "")}".',
        f"Further offers: {len(retries)}, outcomes "
        + ", ".join(f"{k} {v}" for k, v in Counter(r["outcome"] for r in retries).items())
        + f"; slowest answer {max((r['seconds'] for r in retries), default=float('nan')):.2f} s.",
        f"Server clock during the overload ({over['wall_s']:.0f} s): {over['late_frames']:.0f} "
        f"late frames (fell a frame behind, CPU-starved); its longest frame gap so far "
        f"{_gap_ms(gap_before)} before, {_gap_ms(gap_after)} after.",
        f"Bench targets for reference: first reply audio p50 <= {FIRST_AUDIO_P50['en']} s (en) / "
        f"{FIRST_AUDIO_P50['zh']} s (zh), longest frame gap <= {1000 * MAX_FRAME_GAP:.0f} ms.",
    ]
    if conv and conv["rows"]:
        ok = [r for r in conv["rows"] if "error" not in r]
        lines += [
            "For comparison, the conversation's replies (one session, no overload): first audio",
            f"p50 {pct([r['first_audio'] for r in ok], 50):.2f} s, fps min "
            f"{min((r['fps'] for r in ok), default=float('nan')):.1f}, longest frame gap "
            f"{1000 * max((r['max_gap'] for r in ok), default=float('nan')):.0f} ms; server "
            f"{conv['late_frames']:.0f} late frames in {conv['wall_s']:.0f} s.",
        ]
    return targets, lines


def _gap_ms(seconds: float | None) -> str:
    return "-" if seconds is None or seconds != seconds else f"{1000 * seconds:.0f} ms"


def _reply_text(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['lang']}: {row['error']}"
    return (
        f"{row['lang']}: {'answered' if row.get('bot') else 'no answer'}, {row['fps']:.1f} fps, "
        f"longest frame gap {1000 * row['max_gap']:.0f} ms, first audio "
        f"{row['first_audio']:.2f} s"
    )


def compact_censuses(results: dict[str, Any], keep: int = 50) -> None:
    """Keep soak.json small: of each census the tasks, the collection's time,
    and the ``keep`` largest garbage and growth counts, not every type."""
    found = [results.get("census_end"), *(results.get("cycles", {}).get(k) for k in CENSUSES)]
    for census in (c for c in found if c):
        census.pop("objects", None)
        for key in ("garbage", "grown"):
            if key in census:
                top = sorted(census[key].items(), key=lambda item: -item[1])[:keep]
                census[key] = dict(top)


def _end_text(results: dict[str, Any]) -> list[str]:
    """The server at the end of the run, and after it was asked to trim its heap."""
    end, trimmed = results.get("end"), results.get("trimmed")
    if not end:
        return []
    text = (
        f"At the end (no session): RSS {_mib(end['rss'])}, {end['threads']} threads, "
        f"{end['fds']} fds, {_census_text(results.get('census_end'))} asyncio tasks."
    )
    if trimmed:
        text += (
            f" After glibc's malloc_trim(0) in the server (the soak's probe, last): RSS "
            f"{_mib(trimmed['rss'])}, so {_mib(end['rss'] - trimmed['rss'])} of it was heap "
            "freed but not returned to the system."
        )
    return ["", text]


def _changes(results: dict[str, Any]) -> str:
    """What this run changed in the server, said beside every figure."""
    changes = [f"{k}={v}" for k, v in results.get("server_env", {}).items()]
    if results.get("cycles", {}).get("collect_each"):
        changes.append(
            "a full gc.collect() and malloc_trim(0) in the server after every cycle, by the "
            "soak's probe (diagnostic)"
        )
    return f"; **{', '.join(changes)}**" if changes else ""


def report(results: dict[str, Any], command: str) -> str:
    """The "Soak and load" section: targets first, then each part."""
    info = results["machine"]
    loads = results["loads"]
    targets: list[tuple[str, str, str, bool | None]] = []
    parts: list[str] = []
    if results.get("cycles"):
        rows, lines = cycles_section(results["cycles"], results["log"])
        targets += rows
        parts += ["", *lines]
    if results.get("conversation"):
        rows, lines = conversation_section(results["conversation"])
        targets += rows
        parts += ["", *lines]
    if results.get("overload"):
        rows, lines = overload_section(results["overload"], results.get("conversation"))
        targets += rows
        parts += ["", *lines]
    log = results["log"]
    lines = [
        SECTION,
        "",
        f"Run on {results['started']} with `{command}` ({results['wall_s'] / 60:.0f} minutes) "
        f"on: {results['machine_line']}. One server for all parts (`videochat serve "
        f"--loopback-only`, default config{_changes(results)}, real models), aiortc clients "
        "in the soak's process on the same",
        "machine. Other agents shared its 2 cores: load average (1 min) "
        f"{min(loads):.1f} / {pct(loads, 50):.1f} / {max(loads):.1f} (min / median / max over "
        "the run), so the times are under contention.",
        "",
        info.get("summary") or "(no /api/machine summary)",
        "",
        "| check | target | measured | status |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {target} | {measured.replace('|', '/')} | {_status(met)} |"
        for name, target, measured, met in targets
    ]
    lines += [
        "",
        "Server log over the whole run: "
        + ", ".join(f"{name} {count}" for name, count in log.items())
        + ".",
        *_end_text(results),
        *parts,
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------- main
async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    offer_loopback_only()
    prompts = fixture_prompts()
    api_key = secrets.token_urlsafe(24)
    results: dict[str, Any] = {
        "command": args.command,
        "started": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine_line": machine(),
    }
    wall0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="videochat-soak-") as tmp:
        probe = ServerProbe(Path(tmp))
        env = {
            **probe.env(),
            "VIDEOCHAT_SERVER__API_KEY": api_key,
            # The conversation must not meet the session length limit.
            "VIDEOCHAT_SERVER__MAX_DURATION_S": str(
                max(3600, 60 * args.conversation_minutes + 600)
            ),
        }
        if args.max_sessions:
            env["VIDEOCHAT_SERVER__MAX_SESSIONS"] = str(args.max_sessions)
        env.update(args.server_env)
        results["server_env"] = args.server_env
        with running_server(env=env) as (base, process):
            probe.pid = process.pid
            info = server_machine(base)
            results["machine"] = info
            print(f"machine: {info['summary']}", flush=True)
            print(f"server probe installed: {probe.installed}", flush=True)
            loads = [os.getloadavg()[0]]
            if args.cycles:
                results["cycles"] = await run_cycles(
                    base, api_key, process.pid, probe, args.cycles, args.collect_each_cycle
                )
                loads += [r["load"] for r in results["cycles"]["rows"]]
            if args.conversation_minutes:
                results["conversation"] = await run_conversation(
                    base, process.pid, args.conversation_minutes, args.turn_every_s, prompts
                )
                loads += [s["load"] for s in results["conversation"]["samples"]]
            if args.overload:
                capacity = info["limit"] or info["capacity"] or 1
                results["overload"] = await run_overload(base, capacity, prompts)
            await wait_no_sessions(base)
            results["listed_end"] = await sessions_listed(base, api_key)
            results["end"] = process_snapshot(process.pid)
            results["census_end"] = await probe.census()
            # Last, as it changes the heap: what of the RSS glibc held free.
            if await probe.trim():
                await asyncio.sleep(1.0)
                results["trimmed"] = process_snapshot(process.pid)
            loads.append(os.getloadavg()[0])
            results["loads"] = loads
            log_path = process.log_path  # type: ignore[attr-defined]
            results["log"] = log_problems(Path(log_path).read_text(errors="replace"))
            results["log_path"] = log_path
    results["wall_s"] = time.perf_counter() - wall0
    compact_censuses(results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--cycles", type=int, default=100, help="connect/disconnect cycles (0: none)"
    )
    parser.add_argument(
        "--conversation-minutes", type=float, default=30.0, help="conversation length (0: none)"
    )
    parser.add_argument(
        "--turn-every-s", type=float, default=20.0, help="a spoken question this often"
    )
    parser.add_argument("--overload", action="store_true", help="offer twice the capacity at once")
    parser.add_argument(
        "--quick", action="store_true", help="10 cycles, a 2-minute conversation, the overload"
    )
    parser.add_argument("--max-sessions", type=int, default=0, help="pin the server's capacity")
    parser.add_argument("--out", default=str(RESULTS), help="folder for soak.md and soak.json")
    parser.add_argument(
        "--docs",
        action="store_true",
        help=f"also put the report into {DOCS_OUT.relative_to(REPO)} ({SECTION[3:]!r} section)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        type=lambda item: tuple(item.split("=", 1)),
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the server (repeatable), e.g. MALLOC_ARENA_MAX=2",
    )
    parser.add_argument(
        "--collect-each-cycle",
        action="store_true",
        help="diagnostic: gc.collect() and malloc_trim(0) in the server after every cycle",
    )
    parser.add_argument("--command", default=None, help="command line shown in the report")
    parser.add_argument(
        "--report-only",
        metavar="JSON",
        help="run nothing: write the report again from a soak.json (its command)",
    )
    args = parser.parse_args()
    args.server_env = dict(args.server_env)
    if args.quick:
        args.cycles = min(args.cycles, 10)
        args.conversation_minutes = min(args.conversation_minutes, 2.0)
        args.overload = True
    if args.command is None:
        args.command = "python -m bench.soak " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results = json.loads(Path(args.report_only).read_text(encoding="utf-8"))
    else:
        results = asyncio.run(main_async(args))
        (out / "soak.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    text = report(results, results["command"])
    (out / "soak.md").write_text(text, encoding="utf-8")
    if args.docs:
        old = DOCS_OUT.read_text(encoding="utf-8") if DOCS_OUT.exists() else ""
        DOCS_OUT.write_text(splice_section(old, SECTION, text), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
