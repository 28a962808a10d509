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
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.client import Client, to_48k
from bench.launch import REPO, running_server
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


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def tokens(text: str, lang: str) -> list[str]:
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return list(text.replace(" ", "")) if lang == "zh" else text.split()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(values, q))


async def run_language(base: str, lang: str, prompts) -> list[dict]:  # type: ignore[no-untyped-def]
    client = Client(base, lang="auto")
    await client.connect()
    rows = []
    try:
        await asyncio.sleep(1.0)
        for text, pcm, speech_end in prompts:
            seen = len(client.received.events)
            client.mic.say(pcm, speech_end_offset=speech_end)
            await asyncio.sleep(0.05)
            end_of_speech = client.mic.speech_end_times[-1]

            final = await client.wait_for(
                lambda e: e["type"] == "user_text" and e["final"], 60, since=seen
            )
            turn = await client.wait_for(lambda e: e["type"] == "turn", 90, since=seen)
            speaking = await client.wait_for(
                lambda e: e["type"] == "state" and e["value"] == "speaking", 90, since=seen
            )
            await client.wait_for(
                lambda e: e["type"] == "state" and e["value"] == "listening",
                120,
                since=client.index_of(speaking),
            )
            reply_end = time.perf_counter()
            first_audio = client.first_loud_audio_after(end_of_speech + 0.05)
            ref, hyp = tokens(text, lang), tokens(final["text"], lang)
            rows.append(
                {
                    "lang": lang,
                    "prompt": text,
                    "heard": final["text"],
                    "first_audio": (first_audio - end_of_speech) if first_audio else float("nan"),
                    "stages": turn["latency"],
                    "errors": edit_distance(ref, hyp),
                    "ref_len": len(ref),
                    "fps": client.fps_between(first_audio or end_of_speech, reply_end),
                    "bot": " ".join(
                        e["text"]
                        for _, e in client.received.events[seen:]
                        if e["type"] == "bot_text"
                    ),
                }
            )
            print(
                f"[{lang}] {text} -> {final['text']!r}: first audio "
                f"{rows[-1]['first_audio']:.2f} s, fps {rows[-1]['fps']:.1f}",
                flush=True,
            )
            await asyncio.sleep(1.0)
    finally:
        await client.close()
    return rows


async def run_barge_in(base: str, interruption, trials: int = 3) -> list[float]:  # type: ignore[no-untyped-def]
    """Talk over a long reply; return, per trial, the seconds from the start of
    the user's speech to the last non-silent reply audio frame at the client."""
    text, pcm, _speech_end = interruption
    stops: list[float] = []
    client = Client(base, lang="auto")
    await client.connect()
    try:
        for _ in range(trials):
            client.send({"type": "text", "text": "Tell me a long story about a brave dragon."})
            seen = len(client.received.events)
            await client.wait_for(
                lambda e: e["type"] == "state" and e["value"] == "speaking", 90, since=seen
            )
            await asyncio.sleep(1.5)
            since = len(client.received.events)
            client.mic.say(pcm, speech_start_offset=0.3)
            await client.wait_for(
                lambda e: e["type"] == "state" and e["value"] == "listening", 10, since=since
            )
            talk = client.mic.speech_start_times[-1]
            await asyncio.sleep(1.0)
            playing = [
                t for t, rms in client.received.audio if talk - 0.3 < t <= talk and rms > 0.01
            ]
            loud = [t for t, rms in client.received.audio if t > talk and rms > 0.01]
            if not playing:
                print("[barge-in] the reply was not playing when the user talked; trial skipped")
            else:
                stops.append(max(loud, default=talk) - talk)
                print(f"[barge-in] reply audio stopped {stops[-1]:.3f} s after talking", flush=True)
            # Let the interrupting question be answered, then go on.
            await client.wait_for(
                lambda e: e["type"] == "state" and e["value"] == "listening",
                120,
                since=len(client.received.events),
            )
            await asyncio.sleep(1.0)
    finally:
        await client.close()
    return stops


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


def report(rows: list[dict], barge_in: list[float], command: str, out: Path) -> str:
    stage_names = [
        "asr_final",
        "llm_first_token",
        "first_clause",
        "tts_first_audio",
        "first_audio_sent",
    ]
    lines = [
        "# Benchmarks",
        "",
        f"Run on {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} with `{command}` on: {machine()}.",
        "",
        "One session per language, prompts spoken in real time by an aiortc client over",
        "loopback; prompts synthesized by the project's Kokoro TTS with voices other than",
        "the avatar's. Default config (`configs/cpu.yaml`). Times in seconds, from the end",
        "of the user's speech (the last voiced sample sent by the client).",
        "",
        "## End of user speech to first reply audio at the client",
        "",
        "| language | prompts | p50 | p95 | max | video fps during replies (min) | ASR error |",
        "|---|---|---|---|---|---|---|",
    ]
    for lang in ("en", "zh"):
        sub = [r for r in rows if r["lang"] == lang]
        if not sub:
            continue
        firsts = [r["first_audio"] for r in sub]
        err = sum(r["errors"] for r in sub) / max(1, sum(r["ref_len"] for r in sub))
        metric = "CER" if lang == "zh" else "WER"
        lines.append(
            f"| {lang} | {len(sub)} | {pct(firsts, 50):.2f} | {pct(firsts, 95):.2f} | "
            f"{max(firsts):.2f} | {statistics.median(r['fps'] for r in sub):.1f} "
            f"({min(r['fps'] for r in sub):.1f}) | {metric} {100 * err:.1f} % |"
        )
    lines += [
        "",
        "## Per-stage breakdown (server timeline, medians)",
        "",
        "Seconds from the server's end-of-speech estimate (VAD end minus hang-over).",
        "",
        "| language | " + " | ".join(stage_names) + " |",
        "|---|" + "---|" * len(stage_names),
    ]
    for lang in ("en", "zh"):
        sub = [r for r in rows if r["lang"] == lang]
        if not sub:
            continue
        cells = []
        for name in stage_names:
            values = [r["stages"][name] for r in sub if name in r["stages"]]
            cells.append(f"{statistics.median(values):.2f}" if values else "-")
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Every prompt",
        "",
        "| lang | prompt | heard (ASR) | first audio (s) | fps | reply |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['lang']} | {r['prompt']} | {r['heard']} | {r['first_audio']:.2f} | "
            f"{r['fps']:.1f} | {r['bot'][:80]} |"
        )
    text = "\n".join(lines) + "\n"
    out.write_text(text, encoding="utf-8")
    return text


async def main_async(args: argparse.Namespace) -> None:
    offer_loopback_only()
    print("synthesizing prompts ...", flush=True)
    prompts = synthesize_prompts()
    rows: list[dict] = []
    with running_server() as (base, _process):
        for lang in args.langs:
            rows += await run_language(base, lang, prompts[lang])
        barge_in = await run_barge_in(base, prompts["en"][0]) if args.barge_in else []
    print(report(rows, barge_in, args.command, Path(args.out)))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--langs", nargs="+", default=["en", "zh"])
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--command", default="make bench")
    parser.add_argument("--no-barge-in", dest="barge_in", action="store_false")
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
