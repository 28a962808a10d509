"""`make bench`: spoken prompts through an aiortc client against a fresh server.

Writes docs/benchmarks.md. Prompts are synthesized by the project's own TTS
with voices other than the avatar's, then sent as the client's microphone in
real time. "End of speech" is when the client finished sending the last
voiced sample; "first reply audio" is when the first non-silent reply audio
frame arrived at the client.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from bench import answers
from bench.analysis import (
    edit_distance,
    first_moving_mouth,
    frame_stats,
    pct,
    stall_time,
    stalls,
    tokens,
)
from bench.client import Client, to_48k
from bench.launch import REPO, running_server
from bench.plots import write_plots
from server.config import load_config
from server.rtc import offer_loopback_only

PROMPTS = {
    "en": [
        ("What is the capital of France?", "am_michael"),
        ("How many legs does a spider have?", "bm_george"),
        ("Can you recommend a good book to read?", "af_bella"),
        ("What is the weather usually like in London?", "am_adam"),
        ("Tell me a fun fact about the moon.", "bf_emma"),
    ],
    "zh": [
        ("今天天气怎么样？", "zm_yunxi"),
        ("中国的首都是哪里？", "zm_yunjian"),
        ("你能推荐一本好书吗？", "zf_xiaoni"),
        ("一年有多少天？", "zm_yunyang"),
        ("请介绍一下你自己。", "zf_xiaoyi"),
    ],
}


def synthesize_prompts() -> dict[str, list[tuple[str, np.ndarray, float]]]:
    """(text, 48 kHz int16 audio with silence around it, speech end offset s)."""
    from models.tts import KokoroSynthesizer

    config = load_config()
    kokoro = config.weights_path / "kokoro"
    tts = KokoroSynthesizer(kokoro / "kokoro-v1.0.int8.onnx", kokoro / "voices.npz", threads=2)
    out: dict[str, list[tuple[str, np.ndarray, float]]] = {}
    for lang, prompts in PROMPTS.items():
        out[lang] = []
        for text, voice in prompts:
            speech = tts.synthesize(text, lang, voice)
            pcm = to_48k(
                np.clip(speech.audio * 32767, -32768, 32767).astype(np.int16), speech.sample_rate
            )
            lead = np.zeros(int(0.3 * 48000), dtype=np.int16)
            out[lang].append((text, np.concatenate([lead, pcm]), (lead.size + pcm.size) / 48000))
    return out


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds user+system, peak RSS bytes) of a process, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        hwm = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
        return cpu, hwm
    except (OSError, ValueError, IndexError):
        return float("nan"), 0


async def ask(client: Client, lang: str, scenario: str, prompt, barrier=None) -> dict:  # type: ignore[no-untyped-def]
    """Say one prompt, wait for the whole reply; measure it at the client."""
    text, pcm, speech_end = prompt
    if barrier is not None:
        await barrier.wait()  # the sessions of a scenario ask at the same time
    client.received.crops.clear()
    client.keep_crops = True
    seen = len(client.received.events)
    client.mic.say(pcm, speech_end_offset=speech_end)
    await asyncio.sleep(0.05)
    end_of_speech = client.mic.speech_end_times[-1]
    final, turn = await client.wait_for_reply(since=seen)
    reply_end = time.perf_counter()
    client.keep_crops = False
    crops, client.received.crops = client.received.crops, []
    # Idle frames: the avatar listening while the user speaks, just before the end.
    idle = [c for t, c in crops if end_of_speech - 1.6 <= t < end_of_speech]
    first_audio = client.first_loud_audio_after(end_of_speech + 0.05)
    reply_start = first_audio or end_of_speech
    fps, max_gap = frame_stats(client.received.video_times, reply_start, reply_end)
    _, max_gap_net = frame_stats(client.received.video_packet_times, reply_start, reply_end)
    ref, hyp = tokens(text, lang), tokens(final["text"], lang)
    row = {
        "scenario": scenario,
        "lang": lang,
        "prompt": text,
        "heard": final["text"],
        "first_audio": (first_audio - end_of_speech) if first_audio else float("nan"),
        "stall": stall_time(client.received.audio, reply_start, reply_end),
        "stalls": stalls(client.received.audio, reply_start, reply_end),
        "stages": turn["latency"],
        "errors": edit_distance(ref, hyp),
        "ref_len": len(ref),
        "fps": fps,
        "max_gap": max_gap,
        "max_gap_net": max_gap_net,
        "bot": " ".join(
            e["text"] for _, e in client.received.events[seen:] if e["type"] == "bot_text"
        ),
        # The mouth-motion search is slow pure Python: it runs in settle(), once
        # no other session is receiving, so it never blocks their packets.
        "_mouth": (end_of_speech, idle, [(t, c) for t, c in crops if t >= end_of_speech]),
    }
    print(
        f"[{scenario} {lang}] {text} -> {final['text']!r}: first audio "
        f"{row['first_audio']:.2f} s, stall {row['stall']:.2f} s, fps {fps:.1f}, "
        f"max gap {1000 * max_gap:.0f} ms (packets {1000 * max_gap_net:.0f} ms)",
        flush=True,
    )
    return row


def _stall_places(row: dict) -> str:
    """Total stall, then each stall as excess@seconds-into-the-reply."""
    places = " ".join(f"{x:.2f}@{w:.1f}" for w, x in row.get("stalls", []))
    return f"{_f(row['stall'])} ({places})" if places else _f(row["stall"])


def settle(rows: list[dict]) -> list[dict]:
    """Finish the measurements left for after a scenario (first moving mouth)."""
    for row in rows:
        if "_mouth" in row:
            end_of_speech, idle, frames = row.pop("_mouth")
            mouth = first_moving_mouth(idle, frames, 0.0)
            row["first_mouth"] = (mouth - end_of_speech) if mouth else float("nan")
    return rows


async def run_language(
    base: str, lang: str, prompts, scenario: str = "1 session", barrier=None
) -> list[dict]:  # type: ignore[no-untyped-def]  # noqa: E501
    client = Client(base, lang="auto")
    await client.connect()
    rows = []
    try:
        await asyncio.sleep(2.0)  # let the video settle
        for prompt in prompts:
            rows.append(await ask(client, lang, scenario, prompt, barrier))
            await asyncio.sleep(1.0)
    finally:
        await client.close()
    return rows


async def run_concurrent(base: str, langs: list[str], prompts, n: int) -> list[dict]:  # type: ignore[no-untyped-def]
    """n sessions at once, each on its own language's prompt set (cycling), in step."""
    barrier = asyncio.Barrier(n)
    picks = [langs[i % len(langs)] for i in range(n)]
    count = min(len(prompts[lang]) for lang in picks)
    results = await asyncio.gather(
        *(
            run_language(base, lang, prompts[lang][:count], f"{n} sessions", barrier)
            for lang in picks
        )
    )
    return [row for rows in results for row in rows]


STORY_REQUEST = (
    "Please tell me a long story, at least eight sentences, about a brave little dragon "
    "who learns to fly."
)


async def run_barge_in(
    base: str, interruption, trials: int = 3
) -> tuple[list[float], list[float], list[float]]:  # type: ignore[no-untyped-def]  # noqa: E501
    """Talk over a long reply. Return, per trial, the seconds from the start of
    the user's speech to the last non-silent reply audio frame at the client,
    and the server's barge_in_detected_after of the interrupted turns."""
    text, pcm, _speech_end = interruption
    stops: list[float] = []
    detected: list[float] = []
    noticed: list[float] = []
    client = Client(base, lang="auto")
    await client.connect()
    try:
        for _ in range(trials):
            seen = len(client.received.events)
            client.send({"type": "text", "text": STORY_REQUEST})
            first = await client.wait_for(lambda e: e["type"] == "bot_text", 90, since=seen)
            # Talk once the story itself (not just its opener) is playing.
            await client.wait_for(
                lambda e: e["type"] == "bot_text", 90, since=client.index_of(first) + 1
            )
            await asyncio.sleep(0.3)
            since = len(client.received.events)
            client.mic.say(pcm, speech_start_offset=0.3)
            stopped = await client.wait_for(
                lambda e: e["type"] == "state" and e["value"] == "listening", 10, since=since
            )
            talk = client.mic.speech_start_times[-1]
            # The server's "listening" event follows the interruption at once: its
            # arrival splits the stop time into noticing and silencing.
            noticed.append(client.received.events[client.index_of(stopped)][0] - talk)
            await asyncio.sleep(1.0)
            playing = [
                t for t, rms in client.received.audio if talk - 0.6 < t <= talk and rms > 0.01
            ]
            loud = [t for t, rms in client.received.audio if t > talk and rms > 0.01]
            # No reply could stop in under 0.1 s (mic, VAD frame, way back): silence
            # then means the user talked into a pause between sentences.
            if not playing or not any(t <= talk + 0.1 for t in loud):
                print("[barge-in] the reply was not playing when the user talked; trial skipped")
            else:
                stops.append(max(loud, default=talk) - talk)
                print(
                    f"[barge-in] reply audio stopped {stops[-1]:.3f} s after talking "
                    f"(server's interruption event after {noticed[-1]:.3f} s)",
                    flush=True,
                )
            # Let the interrupting question be answered, then go on.
            final = await client.wait_for(
                lambda e: e["type"] == "user_text" and e["final"], 60, since=since
            )
            await client.wait_for(lambda e: e["type"] == "turn", 120, since=client.index_of(final))
            await asyncio.sleep(1.0)
        async with httpx.AsyncClient(timeout=10) as http:
            info = (await http.get(f"{base}/api/sessions/{client.session_id}")).json()
        for turn in info.get("turn_log", []):
            after = turn.get("latency", {}).get("barge_in_detected_after")
            if turn.get("interrupted") and after is not None:
                detected.append(float(after))
    finally:
        await client.close()
    return stops, detected, noticed


def server_pacing(base: str) -> dict[str, float]:
    """The server's own view of frame pacing, from /metrics."""
    wanted = {
        "videochat_frame_max_gap_seconds": "max_gap",
        "videochat_frame_max_send_gap_seconds": "send_gap",
        "videochat_frames_late_total": "late",
    }
    values: dict[str, float] = {}
    try:
        text = httpx.get(f"{base}/metrics", timeout=10).text
    except httpx.HTTPError:
        return values
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            values[wanted[name]] = float(value)
    return values


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.platform()}, "
        f"Python {platform.python_version()}, no GPU"
    )


STAGES = ["asr_final", "llm_first_token", "first_clause", "tts_first_audio", "first_audio_sent"]
LEVERS = "## What each lever gained"
LEVERS_SKELETON = f"""{LEVERS}

Each lever measured on its own against the run before it (same machine, same
command); p50 / p95 of end of speech to first reply audio, en and zh.

| lever | en p50 / p95 | zh p50 / p95 | stall | notes |
|---|---|---|---|---|
| baseline (before) | | | | |
| warm KV cache for the system prompt | | | | |
| shorter VAD hang-over + speculative ASR/LLM | | | | |
| short first clause, cached openers | | | | |
| own threads for LLM / TTS / ASR / media | | | | |
| smaller models (0.5B LLM, tiny.en ASR, voice) | | | | |
| encoder setting | | | | |
"""


def _f(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def _spread(values: list[float]) -> str:
    top = max((v for v in values if v == v), default=float("nan"))
    return f"{_f(pct(values, 50))} / {_f(pct(values, 95))} / {_f(top)}"


def kept_levers(out: Path) -> str:
    """The hand-written "what each lever gained" section of the previous report."""
    try:
        old = out.read_text(encoding="utf-8")
    except OSError:
        return LEVERS_SKELETON
    if LEVERS not in old:
        return LEVERS_SKELETON
    section = old[old.index(LEVERS) :]
    following = section.find("\n## ", len(LEVERS))
    return (section if following < 0 else section[: following + 1]).rstrip() + "\n"


def report(
    rows: list[dict],
    barge_in: tuple[list[float], list[float], list[float]],
    resources: dict[str, dict[str, float]],
    peak_rss: int,
    command: str,
    out: Path,
    plots: list[str],
) -> str:
    levers = kept_levers(out)
    lines = [
        "# Benchmarks",
        "",
        f"Run on {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} with `{command}` on: {machine()}.",
        "",
        "Prompts spoken in real time by aiortc clients over loopback against a server",
        "started for the run (`videochat serve --loopback-only`, default config",
        "`configs/cpu.yaml`); prompts synthesized by the project's Kokoro TTS with voices",
        'other than the avatar\'s. "1 session": one conversation per language, one after',
        'the other. "2 sessions": two conversations at once (en and zh prompt sets), both',
        "asking at the same moment. Times in seconds from the end of the user's speech",
        "(the last voiced sample sent by the client). The client holds received audio",
        "40 ms before decoding (aiortc's default is 80 ms; a browser's jitter buffer adapts",
        "down on loopback), so its times are close to what a browser would play.",
        "With the default config each reply starts with a pre-synthesized opener",
        '("Sure,", "嗯，"), so **first audio** is the opener (or, on a busy CPU, a filler',
        'before it: "Let me see."); **stall** shows the wait after it.',
        "",
        "- **first audio**: first non-silent reply audio frame received by the client;",
        "- **first mouth**: first received video frame whose mouth region differs from",
        "  every idle frame (received while the user spoke) by more than idle frames",
        "  differ among themselves, head sway compensated (`bench/analysis.py`);",
        "- **fps / max gap**: video frames received between first audio and the end",
        "  of the reply, and the longest arrival gap between two of them: decoded",
        "  frames as the client's track returns them / last RTP packet of each frame",
        "  as it arrives, before the client's decoder (the network-side view);",
        "- **stall**: per reply, silences between reply audio frames longer than the",
        "  natural pause between sentences (350 ms), summed beyond that pause;",
        "- **ASR error**: WER (en, words) or CER (zh, characters) of the final transcripts.",
        "",
        "## End of speech to first reply audio and first moving mouth (p50 / p95 / max)",
        "",
        "| scenario | lang | prompts | first audio | first mouth | fps median (min) "
        "| max frame gap (ms) decoded / packets | stall per reply median / max | ASR error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    for scenario in scenarios:
        for lang in ("en", "zh"):
            sub = [r for r in rows if r["lang"] == lang and r["scenario"] == scenario]
            if not sub:
                continue
            err = sum(r["errors"] for r in sub) / max(1, sum(r["ref_len"] for r in sub))
            metric = "CER" if lang == "zh" else "WER"
            fps = [r["fps"] for r in sub]
            stalls = [r["stall"] for r in sub]
            gaps = [r["max_gap"] for r in sub if r["max_gap"] == r["max_gap"]]
            net = [r.get("max_gap_net", float("nan")) for r in sub]
            net = [g for g in net if g == g]
            lines.append(
                f"| {scenario} | {lang} | {len(sub)} | {_spread([r['first_audio'] for r in sub])} "
                f"| {_spread([r['first_mouth'] for r in sub])} "
                f"| {statistics.median(fps):.1f} ({min(fps):.1f}) "
                f"| {1000 * max(gaps, default=float('nan')):.0f} / "
                f"{1000 * max(net, default=float('nan')):.0f} "
                f"| {_f(pct(stalls, 50))} / {_f(max(stalls))} | {metric} {100 * err:.1f} % |"
            )
    stops, detected, noticed = barge_in

    def spread(values: list[float]) -> str:
        return f"{_f(pct(values, 50), 3)} / {_f(max(values, default=float('nan')), 3)}"

    lines += [
        "",
        "## Barge-in",
        "",
        "Talking over a long reply: seconds from the start of the user's speech to the",
        "last non-silent reply audio frame at the client; to the arrival at the client",
        "of the server's `state: listening` event, sent the moment it interrupted the",
        "reply; and the user speech the server's VAD needed to notice",
        "(`barge_in_detected_after`, GET /api/sessions/{id}).",
        "",
        "| trials | reply audio stopped after (p50 / max) | interruption event after "
        "| speech needed (server, p50 / max) |",
        "|---|---|---|---|",
        f"| {len(stops)} | {spread(stops)} | {spread(noticed)} | {spread(detected)} |",
        "",
        "## Resources (server process)",
        "",
        f"Peak RSS (VmHWM, all models loaded): **{peak_rss / 2**30:.2f} GiB**.",
        "",
        "Server-side frame pacing comes from `/metrics` after each scenario (cumulative",
        "over the run): the longest gap between two frames released by a session's",
        "clock, the longest gap between two frames taken by aiortc's sender (it",
        "encodes and sends a frame before taking the next, so this includes encoding),",
        "and the frames released more than a frame late.",
        "",
        "| scenario | wall s | server CPU s | CPU s per session | CPU s per session-second "
        "| server max frame gap so far (ms) | sender max gap so far (ms) | late frames so far |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, res in resources.items():
        per = res["cpu"] / res["sessions"]
        lines.append(
            f"| {name} | {res['wall']:.0f} | {res['cpu']:.1f} | {per:.1f} "
            f"| {per / max(res['wall'], 1e-6):.2f} | {1000 * res.get('max_gap', float('nan')):.0f} "
            f"| {1000 * res.get('send_gap', float('nan')):.0f} "
            f"| {res.get('late', float('nan')):.0f} |"
        )
    lines += [
        "",
        "## Per-stage breakdown (server timeline, medians)",
        "",
        "Seconds from the server's end-of-speech estimate (VAD end minus hang-over).",
        "",
        "| scenario | lang | " + " | ".join(STAGES) + " |",
        "|---|---|" + "---|" * len(STAGES),
    ]
    for scenario in scenarios:
        for lang in ("en", "zh"):
            sub = [r for r in rows if r["lang"] == lang and r["scenario"] == scenario]
            if not sub:
                continue
            cells = []
            for name in STAGES:
                values = [r["stages"][name] for r in sub if name in r["stages"]]
                cells.append(f"{statistics.median(values):.2f}" if values else "-")
            lines.append(f"| {scenario} | {lang} | " + " | ".join(cells) + " |")
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    lines += [
        "",
        "## Every prompt",
        "",
        "| scenario | lang | prompt | heard (ASR) | first audio | first mouth "
        "| stall (each: excess@s into the reply) | fps | max gap (ms) | reply |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['lang']} | {r['prompt']} | {r['heard']} "
            f"| {_f(r['first_audio'])} | {_f(r['first_mouth'])} | {_stall_places(r)} "
            f"| {r['fps']:.1f} | {_f(1000 * r['max_gap'], 0)} | {r['bot'][:80]} |"
        )
    lines += ["", levers.rstrip()]
    text = "\n".join(lines) + "\n"
    out.write_text(text, encoding="utf-8")
    return text


async def main_async(args: argparse.Namespace) -> None:
    offer_loopback_only()
    # --- answers stay right (bench/answers.py): --answers-only runs just that part ---
    if args.answers_only:
        text = await answers.section(args)
        answers.write_only(Path(args.out), text)
        print(text)
        return
    # --- end answers ---
    print("synthesizing prompts ...", flush=True)
    prompts = synthesize_prompts()
    if args.quick:
        prompts = {lang: items[:1] for lang, items in prompts.items()}
    rows: list[dict] = []
    resources: dict[str, dict[str, float]] = {}
    barge_in: tuple[list[float], list[float], list[float]] = ([], [], [])
    with running_server() as (base, process):
        for n in args.sessions:
            name = "1 session" if n == 1 else f"{n} sessions"
            cpu0, wall0 = proc_stats(process.pid)[0], time.perf_counter()
            if n == 1:
                for lang in args.langs:
                    rows += settle(await run_language(base, lang, prompts[lang]))
            else:
                rows += settle(await run_concurrent(base, args.langs, prompts, n))
            resources[name] = {
                "cpu": proc_stats(process.pid)[0] - cpu0,
                "wall": time.perf_counter() - wall0,
                "sessions": n,
                **server_pacing(base),
            }
        if args.barge_in:
            barge_in = await run_barge_in(base, prompts["en"][0], trials=1 if args.quick else 5)
        peak_rss = proc_stats(process.pid)[1]
    out = Path(args.out)
    plots = write_plots(rows, out.parent)
    text = report(rows, barge_in, resources, peak_rss, args.command, out, plots)
    if args.lipsync and not args.quick:
        text += lipsync_section()
    if args.encoder and not args.quick:
        text += encoder_section()
    # --- answers stay right (bench/answers.py): its own servers, openers on/off ---
    if args.answers and not args.quick:
        text += await answers.section(args)
    # --- end answers ---
    out.write_text(text, encoding="utf-8")
    print(text)


def encoder_section() -> str:
    """What the video encoding costs per session, per setting (bench/encoder.py)."""
    from bench import encoder

    print("measuring the video encoder ...", flush=True)
    images = encoder.render_frames(load_config().weights_path)
    lines = [
        "",
        "## Video encoding (`python -m bench.encoder`)",
        "",
        "The same 10 s of the speaking photo avatar (512x512, 25 fps) encoded per",
        "setting; CPU is process time per frame (encoder threads and the RGB to YUV",
        "conversion included); PSNR of the decoded luma against the rendered frames.",
        "",
        *encoder.TABLE_HEADER,
    ]
    for name, make in encoder.SETTINGS.items():
        lines.append(encoder.table_row(name, encoder.measure(images, name, make)))
    return "\n".join(lines) + "\n"


def lipsync_section() -> str:
    """The lip-sync figures of `videochat eval lipsync`, measured in this run for
    both avatar modes: the default photo avatar, and the test video avatar
    (evals.lipsync.make_video_avatar, built in a temporary folder so the user's
    weights/avatars is left alone); docs/lipsync.md has the method."""
    import tempfile

    from evals.lipsync import evaluate, figure_rows, make_video_avatar

    weights = load_config().weights_path
    print("measuring lip-sync (photo mode) ...", flush=True)
    photo, _items = evaluate(weights)
    print("measuring lip-sync (video mode) ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        (scratch / "kokoro").symlink_to((weights / "kokoro").resolve())
        make_video_avatar("talker", scratch / "avatars", weights)
        video, _items = evaluate(scratch, "talker")
    lines = [
        "",
        "## Lip-sync (`videochat eval lipsync` method)",
        "",
        "Targets: lag within ±40 ms, correlation >= 0.6, bilabials closed >= 80 %. "
        "Method and media: [lipsync.md](lipsync.md). Video mode uses the test clip of",
        "docs/lipsync.md (our photo renderer speaking; no recorded person is available",
        "offline).",
        "",
        "| mode | set | lag (ms) | correlation | bilabials closed |",
        "|---|---|---|---|---|",
    ]
    for mode, results in (("photo", photo), ("video", video)):
        lines += [f"| {mode} |{row[1:]}" for row in figure_rows(results)]
    lines.append(
        f"\nRendering (one core, 512x512): photo {photo['render_ms_median']:.2f} ms per frame "
        f"(median, p95 {photo['render_ms_p95']:.2f} ms), video "
        f"{video['render_ms_median']:.2f} ms (p95 {video['render_ms_p95']:.2f} ms)."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--langs", nargs="+", default=["en", "zh"], choices=["en", "zh"])
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--command", default=None, help="command line shown in the report")
    parser.add_argument("--no-barge-in", dest="barge_in", action="store_false")
    parser.add_argument(
        "--sessions", nargs="+", type=int, default=[1, 2], help="concurrent sessions per scenario"
    )
    parser.add_argument("--quick", action="store_true", help="1 prompt per language (smoke test)")
    parser.add_argument("--no-lipsync", dest="lipsync", action="store_false")
    parser.add_argument("--no-encoder", dest="encoder", action="store_false")
    answers.add_arguments(parser)  # --answers-only, --no-answers, --answers-tier
    args = parser.parse_args()
    if args.command is None:
        args.command = "python -m bench " + " ".join(sys.argv[1:]) if sys.argv[1:] else "make bench"
    asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
