"""Pure measurement functions of the benchmark (unit-tested in tests/test_bench.py)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

LOUD_RMS = 0.01  # an audio frame louder than this is reply speech
NATURAL_PAUSE = 0.35  # s; silences up to this long between sentences are not stalls
AUDIO_FRAME = 0.02  # s; one received audio frame
# Lower-centre region of the picture where the mouth is (fractions of height, width).
MOUTH_ROWS = (0.45, 0.85)
MOUTH_COLS = (0.25, 0.75)
MOUTH_STEP = 2  # keep every second pixel of the crop
SHIFT = 2  # +- pixels (of the kept crop) searched to cancel the idle head sway


# ------------------------------------------------------------------- ASR error
def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def tokens(text: str, lang: str) -> list[str]:
    """Words (en, for WER) or characters (zh, for CER), without punctuation."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return list(text.replace(" ", "")) if lang == "zh" else text.split()


def pct(values: Sequence[float], q: float) -> float:
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return float("nan")
    return float(np.percentile(values, q))


# --------------------------------------------------------------- audio stalls
def loud_times(audio: Sequence[tuple[float, float]], start: float, end: float) -> list[float]:
    return [t for t, rms in audio if start <= t <= end and rms > LOUD_RMS]


def stalls(
    audio: Sequence[tuple[float, float]],
    start: float,
    end: float,
    pause: float = NATURAL_PAUSE,
) -> list[tuple[float, float]]:
    """The silences inside a reply longer than the natural pause between sentences.

    ``audio`` is the client's (arrival time, rms) per 20 ms frame. Between the
    first and the last loud frame in [start, end], every silence (gap between
    consecutive loud frames, less one frame) longer than ``pause`` is returned
    as (seconds from the first loud frame to where it starts, seconds beyond
    ``pause``).
    """
    loud = loud_times(audio, start, end)
    found = []
    for before, after in zip(loud, loud[1:], strict=False):
        silence = after - before - AUDIO_FRAME
        if silence > pause:
            found.append((before + AUDIO_FRAME - loud[0], silence - pause))
    return found


def stall_time(
    audio: Sequence[tuple[float, float]],
    start: float,
    end: float,
    pause: float = NATURAL_PAUSE,
) -> float:
    """Seconds of silence inside a reply beyond the natural pause, summed."""
    return sum(excess for _, excess in stalls(audio, start, end, pause))


def silences(
    audio: Sequence[tuple[float, float]], start: float, end: float
) -> list[tuple[float, float, float]]:
    """Every silence between two loud frames in [start, end], as (arrival of
    the loud frame before it, arrival of the loud frame after it, seconds of
    silence: the gap less one frame). Silence before the first and after the
    last loud frame is not inside the reply."""
    loud = loud_times(audio, start, end)
    found = []
    for before, after in zip(loud, loud[1:], strict=False):
        silence = after - before - AUDIO_FRAME
        if silence > 1e-6:
            found.append((before, after, silence))
    return found


def longest_silence(
    audio: Sequence[tuple[float, float]], start: float, end: float
) -> tuple[float, float]:
    """(seconds, where: seconds from the first loud frame to its start) of the
    longest run of silent received audio inside a reply (opener to answer,
    between sentences, anywhere); (0, 0) without any; NaN when the window
    holds no loud frame at all."""
    loud = loud_times(audio, start, end)
    if not loud:
        return float("nan"), float("nan")
    best = (0.0, 0.0)
    for before, _after, silence in silences(audio, start, end):
        if silence > best[0]:
            best = (silence, before + AUDIO_FRAME - loud[0])
    return best


# How far the client's estimate of the answer's start (its first reply audio
# plus the server's opener-to-answer time) may be off: the opener's and the
# answer's leading quiet samples, jitter. Far below a stall (> NATURAL_PAUSE).
ANSWER_START_MARGIN = 0.2


def answer_proper(first_audio: float, latency: dict[str, float]) -> float:
    """Seconds from the end of speech to the first audio of the answer proper
    at the client: the client's first reply audio plus how long the filler and
    opener played before the answer, from the server's marks (one clock:
    ``answer_audio_sent - first_audio_sent``; 0 without an opener). NaN when a
    mark or the client's first audio is missing."""
    answer, first = latency.get("answer_audio_sent"), latency.get("first_audio_sent")
    if answer is None or first is None or first_audio != first_audio:
        return float("nan")
    return first_audio + max(0.0, float(answer) - float(first))


def stall_time_after(
    audio: Sequence[tuple[float, float]],
    start: float,
    answer_start: float,
    end: float,
    pause: float = NATURAL_PAUSE,
    margin: float = ANSWER_START_MARGIN,
) -> float:
    """Like ``stall_time`` over the reply [start, end], counting only the
    silences once the answer proper has started: those that end more than
    ``margin`` after ``answer_start`` (so the wait between an opener and the
    answer, which ends at the answer's first frame, is not counted). NaN when
    the answer's start is unknown."""
    if answer_start != answer_start:
        return float("nan")
    return sum(
        silence - pause
        for _before, after, silence in silences(audio, start, end)
        if silence > pause and after > answer_start + margin
    )


# ---------------------------------------------------------------------- video
def frame_stats(times: Sequence[float], start: float, end: float) -> tuple[float, float]:
    """(fps, longest arrival gap in s) of the video frames received in [start, end]."""
    inside = [t for t in times if start <= t <= end]
    if len(inside) < 2:
        return 0.0, float("nan")
    fps = (len(inside) - 1) / max(inside[-1] - inside[0], 1e-6)
    return fps, float(np.max(np.diff(inside)))


def mouth_crop(gray: np.ndarray) -> np.ndarray:
    """The lower-centre region of a grey picture, every MOUTH_STEP-th pixel, as int16."""
    h, w = gray.shape[:2]
    r0, r1 = int(h * MOUTH_ROWS[0]), int(h * MOUTH_ROWS[1])
    c0, c1 = int(w * MOUTH_COLS[0]), int(w * MOUTH_COLS[1])
    return np.ascontiguousarray(gray[r0:r1:MOUTH_STEP, c0:c1:MOUTH_STEP]).astype(np.int16)


def motion_score(crop: np.ndarray, references: Sequence[np.ndarray], shift: int = SHIFT) -> float:
    """Mean absolute difference between ``crop`` and the closest reference,
    allowing a small shift (the idle head sway moves the whole region)."""
    s = shift
    core = crop[s : crop.shape[0] - s, s : crop.shape[1] - s]
    best = float("inf")
    for ref in references:
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                window = ref[s + dy : ref.shape[0] - s + dy, s + dx : ref.shape[1] - s + dx]
                best = min(best, float(np.mean(np.abs(core - window))))
    return best


def motion_threshold(idle: Sequence[np.ndarray], apart: int = 12, floor: float = 2.0) -> float:
    """How different idle frames are from each other (frames ``apart`` or more
    frames away, so that slow sway counts), with a margin: above this, the mouth moves."""
    worst = 0.0
    for i in range(0, len(idle), 3):
        others = [idle[j] for j in range(len(idle)) if abs(i - j) >= apart]
        if others:
            worst = max(worst, motion_score(idle[i], others[::2]))
    return 1.5 * worst + floor


def first_moving_mouth(
    idle: Sequence[np.ndarray],
    frames: Sequence[tuple[float, np.ndarray]],
    after: float,
    threshold: float | None = None,
) -> float | None:
    """Arrival time of the first frame after ``after`` whose mouth region differs
    from every idle frame by more than the threshold; None if none does."""
    if not idle:
        return None
    if threshold is None:
        threshold = motion_threshold(idle)
    refs = list(idle[-40:])
    for when, crop in frames:
        if when >= after and motion_score(crop, refs) > threshold:
            return when
    return None


# -------------------------------------------------------------------- targets
# The targets; docs/benchmarks.md opens with them, measured.
FIRST_AUDIO_P50 = {"en": 1.2, "zh": 1.5}
ANSWER_P50_FAST = 2.0  # a CPU with AVX-512
ANSWER_P50_SLOW = 3.0  # AVX2 only (or less)
MAX_SILENCE = 1.0
STALL_AFTER_ANSWER_P90 = 0.3
ANSWERS_RIGHT = 0.9
MIN_FPS = 24.5  # "25 fps": every reply, frames received over its span
MAX_FRAME_GAP = 0.1
BARGE_IN = 0.25
PEAK_RSS_BYTES = 3.5e9  # 3.5 GB


def is_fast_kind(kind: str | None) -> bool:
    """A CPU kind (models/calibration.py's CPUFacts.kind) with AVX-512."""
    return bool(kind) and "AVX-512" in str(kind)


def _groups(rows: Sequence[dict], lang: str | None = None) -> list[tuple[str, list[dict]]]:
    """(scenario, its rows [of one language]) in the order scenarios ran."""
    out = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        sub = [r for r in rows if r["scenario"] == scenario and lang in (None, r["lang"])]
        if sub:
            out.append((scenario, sub))
    return out


def _s(value: float) -> str:
    return "-" if value != value else f"{value:.2f} s"


def _per_scenario(
    rows: Sequence[dict], key: str, q: float, limit: float, lang: str | None = None
) -> tuple[str, bool | None]:
    """'1 session 1.03 s; 2 sessions 1.63 s' (the q-th percentile of ``key``)
    and whether every scenario is within ``limit``; None when nothing measured."""
    parts, met = [], []
    for scenario, sub in _groups(rows, lang):
        value = pct([r.get(key, float("nan")) for r in sub], q)
        parts.append(f"{scenario} {_s(value)}")
        if value == value:
            met.append(value <= limit)
    return "; ".join(parts) or "not run", (all(met) if met else None)


def _answers_target(answer_rows: Sequence[dict] | None) -> tuple[str, bool | None]:
    facts = [r for r in answer_rows or [] if r.get("kind", "fact") == "fact"]
    if not facts:
        return "not run (`--no-answers` or `--quick`)", None
    parts, met = [], []
    for tier in dict.fromkeys(r.get("tier", "default") for r in facts):
        share = {}
        texts = []
        for openers in ("on", "off"):
            sub = [r for r in facts if r.get("tier", "default") == tier and r["openers"] == openers]
            if sub:
                right = sum(bool(r["right"]) for r in sub)
                share[openers] = right / len(sub)
                texts.append(f"openers {openers} {right}/{len(sub)} ({100 * share[openers]:.0f} %)")
        parts.append(f"{tier}: " + ", ".join(texts))
        if "on" in share:
            met.append(share["on"] >= ANSWERS_RIGHT and share["on"] >= share.get("off", 0.0))
    return "; ".join(parts), (all(met) if met else None)


def evaluate_targets(
    rows: Sequence[dict],
    barge_in_stops: Sequence[float] = (),
    peak_rss: int = 0,
    kind: str | None = None,
    capacity: int | None = None,
    admission: dict | None = None,
    answer_rows: Sequence[dict] | None = None,
) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met: True / False / None = not measured) per target."""
    targets: list[tuple[str, str, bool | None]] = []
    for lang, limit in FIRST_AUDIO_P50.items():
        measured, met = _per_scenario(rows, "first_audio", 50, limit, lang)
        targets.append((f"{lang} first reply audio p50 <= {limit} s", measured, met))
    fast = is_fast_kind(kind)
    limit = ANSWER_P50_FAST if fast else ANSWER_P50_SLOW
    label = f"{kind or 'unknown'}: {'AVX-512' if fast else 'no AVX-512'}"
    parts, oks = [], []
    for lang in ("en", "zh"):
        measured, met = _per_scenario(rows, "answer_audio", 50, limit, lang)
        if any(r["lang"] == lang for r in rows):
            parts.append(f"{lang}: {measured}")
        if met is not None:
            oks.append(met)
    targets.append(
        (
            f"answer proper p50 <= {limit} s ({label})",
            "; ".join(parts) or "not run",
            all(oks) if oks else None,
        )
    )
    silent = [r.get("longest_silence", float("nan")) for r in rows]
    silent = [v for v in silent if v == v]
    over = sum(v > MAX_SILENCE for v in silent)
    targets.append(
        (
            f"no silence > {MAX_SILENCE} s inside any reply (client)",
            f"longest {_s(max(silent, default=float('nan')))}; "
            f"{over} of {len(silent)} replies over {MAX_SILENCE} s"
            if silent
            else "not measured",
            (over == 0) if silent else None,
        )
    )
    measured, met = _per_scenario(rows, "stall_answer", 90, STALL_AFTER_ANSWER_P90)
    targets.append(
        (f"stalls after the answer starts p90 <= {STALL_AFTER_ANSWER_P90} s", measured, met)
    )
    measured, met = _answers_target(answer_rows)
    targets.append(
        (f"answers right >= {100 * ANSWERS_RIGHT:.0f} %, no lower with openers", measured, met)
    )
    fps = [r["fps"] for r in rows if r.get("fps", float("nan")) == r.get("fps")]
    targets.append(
        (
            "25 fps during replies (every reply >= 24.5, client)",
            f"median {float(np.median(fps)):.1f}, min {min(fps):.1f} fps" if fps else "not run",
            (min(fps) >= MIN_FPS) if fps else None,
        )
    )
    gaps = [r["max_gap"] for r in rows if r.get("max_gap", float("nan")) == r.get("max_gap")]
    net = [r.get("max_gap_net", float("nan")) for r in rows]
    net = [g for g in net if g == g]
    packets = 1000 * max(net, default=float("nan"))
    targets.append(
        (
            f"longest frame gap <= {1000 * MAX_FRAME_GAP:.0f} ms (client, decoded)",
            f"{1000 * max(gaps):.0f} ms (RTP packets {packets:.0f} ms)" if gaps else "not run",
            (max(gaps) <= MAX_FRAME_GAP) if gaps else None,
        )
    )
    stops = [s for s in barge_in_stops if s == s]
    targets.append(
        (
            f"barge-in: reply audio stops <= {1000 * BARGE_IN:.0f} ms after the user starts (max)",
            f"p50 {pct(stops, 50):.3f} s, max {max(stops):.3f} s, {len(stops)} "
            f"trial{'s' if len(stops) != 1 else ''}"
            if stops
            else "not run",
            (max(stops) <= BARGE_IN) if stops else None,
        )
    )
    targets.append(
        (
            "peak RSS <= 3.5 GB (server, all models loaded)",
            f"{peak_rss / 1e9:.2f} GB ({peak_rss / 2**30:.2f} GiB)" if peak_rss else "not measured",
            (peak_rss <= PEAK_RSS_BYTES) if peak_rss else None,
        )
    )
    if capacity is None:
        targets.append(("capacity reported", "no /api/machine", False))
    else:
        text = f"{capacity} conversation{'s' if capacity != 1 else ''} (plan.capacity)"
        met = True
        if admission and "error" in admission:
            text += f"; admission check failed: {admission['error']}"
            met = False
        elif admission:
            text += "; " + admission_text(admission)
            met = admission_ok(admission)
        targets.append(("capacity reported (and enforced)", text, met))
    return targets


def admission_ok(admission: dict) -> bool:
    """Every admitted session opened and answered; the extra one was refused."""
    return (
        admission["admitted"] == admission["limit"]
        and admission["refused"]
        and admission["answered"] == admission["admitted"]
    )


def admission_text(admission: dict) -> str:
    n = admission["limit"]
    return (
        f"admitted {admission['admitted']} of {n + 1}, extra refused: "
        f"{'yes' if admission['refused'] else 'no'}, admitted sessions answered: "
        f"{admission['answered']}/{admission['admitted']}"
    )


def target_table(targets: Sequence[tuple[str, str, bool | None]]) -> list[str]:
    """The markdown table of ``evaluate_targets``."""
    lines = ["| target | measured | status |", "|---|---|---|"]
    for name, measured, met in targets:
        status = "not measured" if met is None else ("met" if met else "**not met**")
        lines.append(f"| {name} | {measured.replace('|', '/')} | {status} |")
    return lines
