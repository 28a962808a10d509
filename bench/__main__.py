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
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np

from bench import answers, kinds
from bench.analysis import (
    MAX_SILENCE,
    admission_text,
    answer_proper,
    edit_distance,
    evaluate_targets,
    first_moving_mouth,
    frame_stats,
    longest_silence,
    pct,
    stall_time,
    stall_time_after,
    stalls,
    target_table,
    tokens,
)
from bench.client import Client, to_48k
from bench.launch import REPO, running_server
from bench.plots import write_plots
from core.config import load_config
from evals.report import machine
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
    from models.tts.kokoro import KokoroSynthesizer

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
    audio = client.received.audio
    latency = turn["latency"]
    first = (first_audio - end_of_speech) if first_audio else float("nan")
    # The answer proper (after any filler and opener) at the client: its first
    # reply audio plus how long the server played before the answer.
    answer = answer_proper(first, latency)
    silence, silence_at = (
        longest_silence(audio, reply_start, reply_end) if first_audio else (float("nan"),) * 2
    )
    row = {
        "scenario": scenario,
        "lang": lang,
        "prompt": text,
        "heard": final["text"],
        "first_audio": first,
        "answer_audio": answer,
        "longest_silence": silence,
        "longest_silence_at": silence_at,
        "stall": stall_time(audio, reply_start, reply_end),
        "stalls": stalls(audio, reply_start, reply_end),
        "stall_answer": stall_time_after(audio, reply_start, end_of_speech + answer, reply_end),
        "stages": latency,
        "playback": turn.get("playback") or {},
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
        f"{row['first_audio']:.2f} s, answer {answer:.2f} s, longest silence "
        f"{silence:.2f} s, stall {row['stall']:.2f} s (after the answer starts "
        f"{row['stall_answer']:.2f} s), fps {fps:.1f}, "
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


def preamble_texts() -> set[str]:
    """The fillers and openers of the config: said before the answer proper."""
    llm = load_config().llm
    texts: set[str] = set()
    for table in (llm.openers, llm.fillers):
        for items in (table or {}).values():
            texts.update(t.strip() for t in items)
    return texts


async def run_barge_in(
    base: str, interruption, trials: int = 3
) -> tuple[list[float], list[float], list[float]]:  # type: ignore[no-untyped-def]  # noqa: E501
    """Talk over a long reply. Return, per trial, the seconds from the start of
    the user's speech to the last non-silent reply audio frame at the client,
    and the server's barge_in_detected_after of the interrupted turns."""
    text, pcm, _speech_end = interruption
    preamble = preamble_texts()
    stops: list[float] = []
    detected: list[float] = []
    noticed: list[float] = []
    client = Client(base, lang="auto")
    await client.connect()
    try:
        for _ in range(trials):
            seen = len(client.received.events)
            client.send({"type": "text", "text": STORY_REQUEST})
            # Talk once the story itself (not a filler or the opener) is playing.
            await client.wait_for(
                lambda e: e["type"] == "bot_text" and e["text"].strip() not in preamble,
                120,
                since=seen,
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
            url = f"{base}/api/sessions/{client.session_id}"
            info = (await http.get(url, headers=client.auth)).json()
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


def cpu_kind(cpu: dict) -> str:
    """The CPU kind of a calibration (models/calibration.py's CPUFacts.kind:
    "AVX2", "AVX-512 VNNI", ...), from its flags."""
    if cpu.get("kind"):
        return str(cpu["kind"])
    try:
        from models.calibration import CPUFacts

        return str(CPUFacts.kind.fget(SimpleNamespace(**cpu)))  # type: ignore[attr-defined]
    except Exception:
        return "unknown"


def server_machine(base: str) -> dict:
    """What the bench's server says of this machine: GET /api/machine (its
    summary paragraph, the CPU kind of its calibration, ``plan.capacity``)
    and the admission limit it enforces (/health ``capacity``)."""
    info: dict = {"summary": "", "kind": None, "capacity": None, "limit": None}
    try:
        response = httpx.get(f"{base}/api/machine", timeout=10)
        if response.status_code == 200:
            data = response.json()
            info["summary"] = data.get("summary", "")
            check = data.get("spot_check")
            if check:  # today's TTS speed against the cached calibration
                info["summary"] += (
                    f" Start-up TTS spot check: {check['measured_s']:.2f} s against "
                    f"{check['predicted_s']:.2f} s calibrated (x{check['ratio']:.2f})."
                )
            info["kind"] = cpu_kind(data.get("calibration", {}).get("cpu", {}))
            capacity = data.get("plan", {}).get("capacity")
            info["capacity"] = int(capacity) if capacity is not None else None
        else:
            info["summary"] = f"(GET /api/machine: {response.status_code} {response.text[:200]})"
        limit = httpx.get(f"{base}/health", timeout=10).json().get("capacity")
        info["limit"] = int(limit) if limit is not None else None
    except (httpx.HTTPError, ValueError) as exc:
        info["summary"] = info["summary"] or f"(GET /api/machine failed: {exc})"
    return info


async def run_admission(base: str, limit: int, langs: list[str]) -> dict:
    """Open ``limit`` sessions and one more: the extra offer must get 503 with
    a Retry-After header and a message, and every admitted session must still
    answer one typed question (asked at the same time, over the data channel)."""
    questions = [
        next(q for q in answers.QUESTIONS if q.lang == lang and q.kind == "fact") for lang in langs
    ]
    result: dict = {
        "limit": limit,
        "admitted": 0,
        "refused": False,
        "status": None,
        "retry_after": None,
        "message": "",
        "answered": 0,
        "right": 0,
        "replies": [],
    }
    admitted: list[Client] = []
    extra = Client(base, lang="auto")
    try:
        for _ in range(limit):
            client = Client(base, lang="auto")
            try:
                await client.connect()
            except httpx.HTTPStatusError as exc:
                await client.close()
                result["message"] = f"admitted session refused: {exc}"
                break
            admitted.append(client)
        result["admitted"] = len(admitted)
        try:
            await extra.connect()
            result["status"] = 200
        except httpx.HTTPStatusError as exc:
            response = exc.response
            retry = response.headers.get("retry-after")
            try:
                message = str(response.json().get("detail", ""))
            except ValueError:
                message = response.text
            result.update(status=response.status_code, retry_after=retry, message=message)
            result["refused"] = response.status_code == 503 and bool(retry) and bool(message)
        print(
            f"[admission] {len(admitted)} of {limit + 1} admitted; the extra offer got "
            f"{result['status']} (Retry-After: {result['retry_after']}): {result['message']}",
            flush=True,
        )
        await asyncio.sleep(1.0)  # let the media settle

        async def typed(client: Client, question: answers.Question) -> str:
            seen = len(client.received.events)
            client.send({"type": "text", "text": question.text})
            try:
                await client.wait_for_reply(since=seen, timeout=150)
            except TimeoutError:
                return ""
            return " ".join(
                e["text"] for _, e in client.received.events[seen:] if e["type"] == "bot_text"
            ).strip()

        asked = [questions[i % len(questions)] for i in range(len(admitted))]
        replies = await asyncio.gather(*(typed(c, q) for c, q in zip(admitted, asked, strict=True)))
        for question, reply in zip(asked, replies, strict=True):
            result["replies"].append((question.text, reply))
            result["answered"] += bool(reply)
            result["right"] += answers.is_right(reply, question.keys)
            print(f"[admission] {question.text} -> {reply!r}", flush=True)
    finally:
        await extra.close()
        for client in admitted:
            await client.close()
    return result


STAGES = ["asr_final", "llm_first_token", "first_clause", "tts_first_audio", "first_audio_sent"]
LEVERS = "## What each lever gained"
SOAK_SECTION = "## Soak and load"
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


def _spread(values: list[float], q: float = 95) -> str:
    """p50 / p``q`` / max."""
    top = max((v for v in values if v == v), default=float("nan"))
    return f"{_f(pct(values, 50))} / {_f(pct(values, q))} / {_f(top)}"


def _plural(n: int) -> str:
    return f"{n} conversation{'s' if n != 1 else ''}"


def machine_section(info: dict, skipped: list[int], admission: dict | None) -> list[str]:
    """The server's own account of this machine, what it holds and the
    admission check: at the top of the report, beside every figure."""
    capacity, limit = info.get("capacity"), info.get("limit")
    lines = ["## This machine", ""]
    lines += [info.get("summary") or "(no /api/machine summary)", ""]
    held = (
        f"**{_plural(capacity)}** at once (`plan.capacity`, GET /api/machine)"
        if capacity is not None
        else "unknown (no `plan.capacity`)"
    )
    text = f"Capacity: {held}"
    if limit is not None and limit != capacity:
        text += f"; the server admits {limit} (`server.max_sessions` pinned in the config)"
    lines.append(text + ".")
    if skipped:
        names = ", ".join(f"{n}-session" for n in skipped)
        lines += [
            "",
            f"This machine holds {_plural(capacity or limit or 1)}, so the {names} rows are "
            "not run.",
        ]
    if admission is not None:
        lines += ["", "Admission check (`--no-admission` skips it): "]
        if "error" in admission:
            lines[-1] += f"failed: {admission['error']}."
        else:
            refused = (
                f"the extra offer got {admission['status']} (Retry-After: "
                f'{admission["retry_after"]}, "{admission["message"]}")'
            )
            lines[-1] += (
                f"{admission_text(admission)} ({refused}; one typed question per admitted "
                f"session, asked at once: {admission['right']} right)."
            )
    return lines + [""]


def kept_section(out: Path, heading: str) -> str | None:
    """A section of the previous report that this run does not write (``heading``
    to the next ``## ``), or None."""
    try:
        old = out.read_text(encoding="utf-8")
    except OSError:
        return None
    if heading not in old:
        return None
    section = old[old.index(heading) :]
    following = section.find("\n## ", len(heading))
    return (section if following < 0 else section[: following + 1]).rstrip() + "\n"


def kept_levers(out: Path) -> str:
    """The hand-written "what each lever gained" section of the previous report."""
    return kept_section(out, LEVERS) or LEVERS_SKELETON


def report(
    rows: list[dict],
    barge_in: tuple[list[float], list[float], list[float]],
    resources: dict[str, dict[str, float]],
    peak_rss: int,
    command: str,
    out: Path,
    plots: list[str],
    machine_info: dict | None = None,
    admission: dict | None = None,
    answer_rows: list[dict] | None = None,
    skipped: list[int] | None = None,
    emulated: str | None = None,
) -> str:
    levers = kept_levers(out)
    soak = kept_section(out, SOAK_SECTION)  # written by `make soak` (bench/soak.py)
    voices = kept_section(out, "## Voice matching")  # written by `videochat eval voices`
    info = machine_info or {}
    kind = info.get("kind")
    capacity = info.get("capacity")
    held = f", holds {_plural(capacity)}" if capacity is not None else ""
    targets = evaluate_targets(rows, barge_in[0], peak_rss, kind, capacity, admission, answer_rows)
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    how = f", emulated with `{emulated}`" if emulated else ""
    this_kind = kinds.entry(
        kind or "unknown",
        when,
        command,
        emulated,
        info.get("summary", ""),
        target_table(targets),
    )
    lines = [
        "# Benchmarks",
        "",
        f"Run on {when} with `{command}` on: {machine()}; "
        f"CPU kind **{kind or 'unknown'}** (the server's calibration){held}{how}.",
        "",
        *machine_section(info, skipped or [], admission),
        "## Against the targets",
        "",
        "Every scenario run must meet a latency target (each listed); the answer-proper",
        "target depends on the CPU kind (2.0 s with AVX-512, 3.0 s without). Definitions",
        "below.",
        "",
        *target_table(targets),
        "",
        *kinds.section(out, kind or "unknown", this_kind),
        "## How it is measured",
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
        "  natural pause between sentences (350 ms), summed beyond that pause (whole",
        "  reply, from its first audio: the wait after an opener counts);",
        "- **answer proper**: end of speech to the first audio of the answer itself,",
        "  after any filler and opener, at the client: its first reply audio plus how",
        "  long the server played filler and opener before the answer (the turn's",
        "  `answer_audio_sent - first_audio_sent`, one server clock); the first audio",
        "  when there was no opener;",
        "- **longest silence**: per reply, the longest run of silent received audio",
        "  between its first and last loud frame (opener to answer, between sentences);",
        "- **stall after the answer starts**: the stall above, counting only silences",
        "  that end after the answer proper has started (0.2 s margin for the",
        "  estimate), so the wait after an opener is not in it;",
        "- **server gap**: the turn's `playback.longest_gap_in_answer` (server clock:",
        "  frames released without reply audio once the answer had started);",
        "- **ASR error**: WER (en, words) or CER (zh, characters) of the final transcripts.",
        "",
        "## End of speech to first reply audio and first moving mouth (p50 / p95 / max)",
        "",
        "| scenario | lang | prompts | first audio | first mouth | fps median (min) "
        "| max frame gap (ms) decoded / packets | stall per reply (whole reply) median / max "
        "| ASR error |",
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
    if skipped:
        lines += [
            "",
            f"Not run: {', '.join(f'{n} sessions' for n in skipped)} (more than this machine "
            "holds, see above).",
        ]
    lines += [
        "",
        "## Reply audio at the client: answer proper, silences, stalls after the answer",
        "",
        "Answer proper in seconds from the end of speech (p50 / p95 / max); per reply",
        "silences and stalls in seconds (p50 / p90 / max); **lead**: median seconds of",
        "filler and opener before the answer (server marks). Targets: no silence over",
        f"{MAX_SILENCE:.1f} s in any reply, stall after the answer starts p90 <= 0.3 s.",
        "",
        "| scenario | lang | replies | answer proper | lead | longest silence "
        f"| replies with silence > {MAX_SILENCE:.1f} s | stall after the answer starts "
        "| stall, whole reply (old) | server gap in answer, max (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in scenarios:
        groups = [
            (lang, [r for r in rows if r["lang"] == lang and r["scenario"] == scenario])
            for lang in ("en", "zh")
        ]
        groups = [(lang, sub) for lang, sub in groups if sub]
        if len(groups) > 1:
            groups.append(("all", [r for _, sub in groups for r in sub]))
        for lang, sub in groups:
            lead = [r["answer_audio"] - r["first_audio"] for r in sub]
            silence = [r.get("longest_silence", float("nan")) for r in sub]
            measured = [v for v in silence if v == v]
            server_gap = [
                float(r.get("playback", {}).get("longest_gap_in_answer", float("nan"))) for r in sub
            ]
            server_gap = [g for g in server_gap if g == g]
            lines.append(
                f"| {scenario} | {lang} | {len(sub)} | {_spread([r['answer_audio'] for r in sub])} "
                f"| {_f(pct(lead, 50))} | {_spread(silence, 90)} "
                f"| {sum(v > MAX_SILENCE for v in measured)} of {len(measured)} "
                f"| {_spread([r['stall_answer'] for r in sub], 90)} "
                f"| {_spread([r['stall'] for r in sub], 90)} "
                f"| {_f(1000 * max(server_gap, default=float('nan')), 0)} |"
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
        "| scenario | lang | prompt | heard (ASR) | first audio | answer proper | first mouth "
        "| longest silence (@s into the reply) | stall (each: excess@s into the reply) "
        "| stall after the answer starts | fps | max gap (ms) | reply |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        silence = r.get("longest_silence", float("nan"))
        where = r.get("longest_silence_at", float("nan"))
        lines.append(
            f"| {r['scenario']} | {r['lang']} | {r['prompt']} | {r['heard']} "
            f"| {_f(r['first_audio'])} | {_f(r.get('answer_audio', float('nan')))} "
            f"| {_f(r['first_mouth'])} "
            f"| {_f(silence)}{f' (@{where:.1f})' if silence == silence and silence > 0 else ''} "
            f"| {_stall_places(r)} | {_f(r.get('stall_answer', float('nan')))} "
            f"| {r['fps']:.1f} | {_f(1000 * r['max_gap'], 0)} | {r['bot'][:80]} |"
        )
    lines += ["", levers.rstrip()]
    if soak:
        lines += ["", soak.rstrip()]
    if voices:
        lines += ["", voices.rstrip()]
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
    skipped: list[int] = []
    admission: dict | None = None
    with running_server() as (base, process):
        info = server_machine(base)
        print(f"machine: {info['summary']}", flush=True)
        # Scenarios with more sessions than the machine holds would be refused (503).
        holds = info["capacity"] or info["limit"] or 1
        print(f"capacity: {info['capacity']} (server admits {info['limit']})", flush=True)
        for n in args.sessions:
            name = "1 session" if n == 1 else f"{n} sessions"
            if n > holds:
                skipped.append(n)
                print(f"{name}: not run, this machine holds {holds}", flush=True)
                continue
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
        if args.admission:
            limit = info["limit"] or holds
            try:
                admission = await run_admission(base, limit, args.langs)
            except Exception as exc:  # reported, not fatal: the figures above stand
                print(f"[admission] failed: {exc!r}", flush=True)
                admission = {"limit": limit, "error": repr(exc)[:300]}
        peak_rss = proc_stats(process.pid)[1]
    out = Path(args.out)
    plots = write_plots(rows, out.parent)

    def render(answer_rows: list[dict] | None = None) -> str:
        return report(
            rows,
            barge_in,
            resources,
            peak_rss,
            args.command,
            out,
            plots,
            machine_info=info,
            admission=admission,
            answer_rows=answer_rows,
            skipped=skipped,
            emulated=args.emulated,
        )

    render()  # written now; again below with the answers' figures in the targets
    extra = ""
    if args.lipsync and not args.quick:
        extra += lipsync_section()
    if args.encoder and not args.quick:
        extra += encoder_section()
    # --- answers stay right (bench/answers.py): its own servers, openers on/off ---
    answer_rows = None
    if args.answers and not args.quick:
        answer_rows, wall = await answers.run_answers(args.answers_tier or [{}], langs=args.langs)
        extra += "\n" + answers.report_section(answer_rows, wall)
    # --- end answers ---
    text = render(answer_rows) + extra
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
    parser.add_argument(
        "--emulated",
        default=None,
        metavar="HOW",
        help="this run emulates a slower machine, e.g. 'slow-cpu 0.4' (said in the report)",
    )
    parser.add_argument("--no-barge-in", dest="barge_in", action="store_false")
    parser.add_argument(
        "--sessions", nargs="+", type=int, default=[1, 2], help="concurrent sessions per scenario"
    )
    parser.add_argument("--quick", action="store_true", help="1 prompt per language (smoke test)")
    parser.add_argument(
        "--voice", default=None, help="the voice every session asks for (default: the server's)"
    )
    parser.add_argument("--no-lipsync", dest="lipsync", action="store_false")
    parser.add_argument("--no-encoder", dest="encoder", action="store_false")
    parser.add_argument(
        "--no-admission",
        dest="admission",
        action="store_false",
        help="skip the admission check (capacity + 1 sessions: the extra one refused)",
    )
    answers.add_arguments(parser)  # --answers-only, --no-answers, --answers-tier
    args = parser.parse_args()
    if args.command is None:
        args.command = "python -m bench " + " ".join(sys.argv[1:]) if sys.argv[1:] else "make bench"
    Client.default_voice = args.voice
    asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
