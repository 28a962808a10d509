"""Measure lip-sync: ``videochat eval lipsync`` (or ``python -m evals.lipsync``).

Renders a fixed set of English and Chinese sentences with the real Kokoro TTS
through the real avatar renderer (exactly the frames and audio the session
would send), runs mediapipe FaceMesh on the rendered frames and reports:

* **lag**: the shift (ms, positive = the mouth moves after the sound) that
  maximizes the correlation between the mouth opening (inner-lip distance
  13-14 over the mouth width 61-291) and the audio envelope (RMS in 40 ms
  windows), both at 100 Hz, searched over +-200 ms; target within +-40 ms;
* **correlation** at that lag, pooled over all sentences; target >= 0.6;
* **bilabial closure**: the share of p/b/m phonemes during which some frame
  shows closed lips (inner-lip gap below ``CLOSED_GAP`` of the mouth width);
  target >= 80 %. The p/b/m spans are Kokoro's own predicted durations (the
  timed graph, models/tts/kokoro_timing.py), i.e. where the TTS put them in the
  audio, not an estimate of ours. Without the timed graph they fall back to our
  aligner's spans (and the doc says so).
* **fallback**: the same sentences driven by our phoneme aligner
  (models/phonemes.py ``align_phonemes``, what runs when the timed graph is
  missing) instead of Kokoro's durations, measured the same way against
  Kokoro's spans, plus the aligner's p/b/m start error against them.

Writes ``docs/lipsync.md``, ``docs/lipsync_sheet.png`` (a contact sheet across
one sentence) and ``docs/lipsync_en.mp4`` (H.264 + AAC).
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path

import numpy as np

from models.base import MEDIA_FPS, MEDIA_SAMPLE_RATE, Speech
from models.phonemes import BILABIALS, align_phonemes

SENTENCES: list[tuple[str, str]] = [
    ("en", "Maybe my mom will bring apple pie to the picnic."),
    ("en", "Please pass me the big blue box before lunch."),
    ("en", "We should meet by the harbour in the morning, maybe at nine."),
    ("en", "Thank you for asking, I am happy to help with your problem."),
    ("zh", "妈妈明天不忙，我们去公园跑步吧。"),
    ("zh", "爸爸买了一本漂亮的画报。"),
    ("zh", "你好，很高兴认识你，我叫小美。"),
    ("zh", "北京的冬天比上海冷不少。"),
]
CLOSED_GAP = 0.06  # inner-lip gap / mouth width below which the lips count as closed
RATE = 100  # analysis rate (Hz)


@dataclass
class Rendered:
    lang: str
    text: str
    frames: list[np.ndarray]
    audio: np.ndarray  # 48 kHz float32, exactly what the frames carried
    timings: list[tuple[str, float, float]]
    render_ms: list[float] = field(default_factory=list)
    gap: np.ndarray | None = None  # inner-lip gap / mouth width per frame (nan: no face)


def _resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    from scipy.signal import resample_poly

    g = gcd(rate, target)
    return resample_poly(np.asarray(audio, np.float32), target // g, rate // g).astype(np.float32)


def render_sentence(stream, speech: Speech, lang: str, text: str, tail_frames: int = 6) -> Rendered:
    audio48 = _resample(speech.audio, speech.sample_rate, MEDIA_SAMPLE_RATE)
    stream.push_audio(audio48, tag="eval", speech=speech)
    stream.end_of_segment()
    frames, pcm, ms = [], [], []
    n = int(np.ceil(audio48.size / (MEDIA_SAMPLE_RATE // MEDIA_FPS))) + tail_frames
    for _ in range(n):
        t = time.perf_counter()
        f = stream.next_frame()
        ms.append((time.perf_counter() - t) * 1000)
        frames.append(f.image)
        pcm.append(f.audio)
    audio = np.concatenate(pcm).astype(np.float32) / 32768.0
    return Rendered(lang, text, frames, audio, list(speech.phonemes), ms)


def measure_gaps(frames: list[np.ndarray]) -> np.ndarray:
    """Inner-lip gap over mouth width per frame, by FaceMesh in tracking mode."""
    import mediapipe as mp

    out = np.full(len(frames), np.nan, np.float32)
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=False, max_num_faces=1, refine_landmarks=True
    ) as mesh:
        for i, img in enumerate(frames):
            res = mesh.process(img)
            if not res.multi_face_landmarks:
                continue
            lm = res.multi_face_landmarks[0].landmark
            h, w = img.shape[:2]

            def p(k: int, lm=lm, w=w, h=h) -> np.ndarray:
                return np.array([lm[k].x * w, lm[k].y * h])

            width = np.linalg.norm(p(61) - p(291))
            out[i] = np.linalg.norm(p(13) - p(14)) / max(width, 1e-6)
    return out


def _envelope(audio: np.ndarray, n: int) -> np.ndarray:
    """RMS over 40 ms windows centred on each 10 ms step."""
    hop = MEDIA_SAMPLE_RATE // RATE
    sq = np.concatenate([np.zeros(2 * hop), audio.astype(np.float64) ** 2, np.zeros(2 * hop)])
    c = np.cumsum(sq)
    idx = np.arange(n) * hop + hop // 2 + 2 * hop
    lo = np.clip(idx - 2 * hop, 0, c.size - 1)
    hi = np.clip(idx + 2 * hop, 0, c.size - 1)
    return np.sqrt((c[hi] - c[lo]) / (4 * hop)).astype(np.float32)


def _mouth_100hz(gap: np.ndarray, n: int) -> np.ndarray:
    t_frames = (np.arange(gap.size) + 0.5) / MEDIA_FPS
    g = gap.copy()
    ok = ~np.isnan(g)
    if not ok.any():
        return np.zeros(n, np.float32)
    g[~ok] = np.interp(t_frames[~ok], t_frames[ok], g[ok])
    t = (np.arange(n) + 0.5) / RATE
    return np.interp(t, t_frames, g).astype(np.float32)


def lag_and_corr(pairs: list[tuple[np.ndarray, np.ndarray]], max_lag_ms: int = 200):
    """Best lag (ms, positive = mouth after sound) and its Pearson correlation,
    pooled over (mouth, envelope) pairs at 100 Hz; with parabolic refinement."""
    lags = np.arange(-max_lag_ms // 10, max_lag_ms // 10 + 1)
    corrs = []
    for lag in lags:
        xs, ys = [], []
        for m, e in pairs:
            if lag >= 0:
                xs.append(m[lag:])
                ys.append(e[: e.size - lag])
            else:
                xs.append(m[: m.size + lag])
                ys.append(e[-lag:])
        x, y = np.concatenate(xs), np.concatenate(ys)
        corrs.append(float(np.corrcoef(x, y)[0, 1]))
    corrs = np.array(corrs)
    k = int(np.argmax(corrs))
    frac = 0.0
    if 0 < k < corrs.size - 1:
        a, b, c = corrs[k - 1], corrs[k], corrs[k + 1]
        den = a - 2 * b + c
        frac = 0.5 * (a - c) / den if den != 0 else 0.0
    return float((lags[k] + frac) * 10.0), float(corrs[k]), corrs


def bilabial_closure(r: Rendered, slack_s: float = 0.02) -> tuple[int, int]:
    closed = total = 0
    centres = (np.arange(len(r.frames)) + 0.5) / MEDIA_FPS
    for ph, start, end in r.timings:
        if ph not in BILABIALS:
            continue
        sel = (centres >= start - slack_s) & (centres <= end + slack_s)
        if not sel.any():  # shorter than a frame: the nearest frame
            sel = np.zeros_like(sel)
            sel[int(np.argmin(np.abs(centres - (start + end) / 2)))] = True
        g = r.gap[sel]
        g = g[~np.isnan(g)]
        total += 1
        closed += int(g.size > 0 and g.min() < CLOSED_GAP)
    return closed, total


def _label_font(size: int = 11):
    """DejaVu Sans (shipped with matplotlib; it has the IPA letters that cv2's
    Hershey fonts lack), or None."""
    try:
        import matplotlib
        from PIL import ImageFont

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), size)
    except (ImportError, OSError):
        return None


def _draw_label(tile: np.ndarray, text: str, font) -> np.ndarray:
    """``tile`` with ``text`` in white on a black strip along its bottom."""
    import cv2

    h, w = tile.shape[:2]
    cv2.rectangle(tile, (0, h - 16), (w, h), (0, 0, 0), -1)
    if font is None:  # no TrueType font: ASCII only (IPA letters become "?")
        ascii_text = text.encode("ascii", "replace").decode()
        cv2.putText(
            tile, ascii_text, (3, h - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1
        )
        return tile
    from PIL import Image, ImageDraw

    img = Image.fromarray(tile)
    ImageDraw.Draw(img).text((3, h - 15), text, font=font, fill=(255, 255, 255))
    return np.asarray(img).copy()


def contact_sheet(r: Rendered, path: Path, cols: int = 8, rows: int = 2) -> None:
    import cv2

    n = len(r.frames)
    picks = np.linspace(0, n - 7, cols * rows).astype(int)
    font = _label_font()
    tiles = []
    for i in picks:
        img = r.frames[i][120:440, 96:416]  # head and mouth
        tile = cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA).copy()
        t = (i + 0.5) / MEDIA_FPS
        label = "".join(p for p, a, b in r.timings if a - 0.02 <= t < b + 0.02)[:4]
        tiles.append(_draw_label(tile, f"{t:4.2f}s {label}", font))
    grid = np.concatenate(
        [np.concatenate(tiles[k * cols : (k + 1) * cols], axis=1) for k in range(rows)], axis=0
    )
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])


def write_mp4(items: list[Rendered], path: Path) -> None:
    import av

    with av.open(str(path), "w") as box:
        v = box.add_stream("libx264", rate=MEDIA_FPS)
        v.width = v.height = items[0].frames[0].shape[0]
        v.pix_fmt = "yuv420p"
        v.options = {"crf": "30", "preset": "medium"}
        a = box.add_stream("aac", rate=MEDIA_SAMPLE_RATE)
        a.layout = "mono"
        a.bit_rate = 48000
        frames = [f for r in items for f in r.frames]
        audio = np.concatenate([r.audio for r in items])
        for img in frames:
            for pkt in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                box.mux(pkt)
        pcm = np.rint(np.clip(audio, -1, 1) * 32767).astype(np.int16)
        step = 1024
        for k in range(0, pcm.size, step):
            block = pcm[k : k + step]
            af = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
            af.sample_rate = MEDIA_SAMPLE_RATE
            af.pts = k
            for pkt in a.encode(af):
                box.mux(pkt)
        for pkt in v.encode(None):
            box.mux(pkt)
        for pkt in a.encode(None):
            box.mux(pkt)


CLIP_TEXT = "Hello! My name is Anna. Maybe we can talk about books, music or the weather today."


def make_talking_clip(path: Path, weights: Path | None, seconds: float = 6.0) -> Path:
    """Test material for video mode (no recorded person is available offline):
    an MP4 of the photo renderer (the astronaut) speaking real Kokoro TTS audio
    (``CLIP_TEXT``, 4.8 s), with 0.6 s of idle face before and after, so its frames hold
    many real mouth openings. Without Kokoro weights a voiced buzz with a
    syllable rhythm stands in for the speech."""
    import av

    from models.avatar.model import PhotoAvatarModel

    n_frames = int(round(seconds * MEDIA_FPS))
    lead = int(0.6 * MEDIA_SAMPLE_RATE)
    speech = None
    kokoro = None if weights is None else weights / "kokoro"
    if kokoro is not None and kokoro.is_dir():
        from models.tts.kokoro import KOKORO_MODEL_FILE, KOKORO_VOICES_FILE, KokoroSynthesizer

        if (kokoro / KOKORO_MODEL_FILE).is_file():
            tts = KokoroSynthesizer(kokoro / KOKORO_MODEL_FILE, kokoro / KOKORO_VOICES_FILE)
            speech = tts.synthesize(CLIP_TEXT, "en")
    if speech is not None:
        voice = _resample(speech.audio, speech.sample_rate, MEDIA_SAMPLE_RATE)
    else:
        t = np.arange(int(4.5 * MEDIA_SAMPLE_RATE)) / MEDIA_SAMPLE_RATE
        buzz = np.sign(np.sin(2 * np.pi * 160 * t)) * 0.5 + 0.3 * np.sin(2 * np.pi * 480 * t)
        voice = (0.4 * buzz * np.clip(np.sin(2 * np.pi * 3.3 * t), 0, 1)).astype(np.float32)
    stream = PhotoAvatarModel(weights or Path("/nonexistent")).new_stream("astronaut", seed=3)
    with av.open(str(path), "w") as box:
        v = box.add_stream("mpeg4", rate=MEDIA_FPS)
        v.width = v.height = 512
        v.pix_fmt = "yuv420p"
        v.bit_rate = 8_000_000
        for i in range(n_frames):
            if i == lead // (MEDIA_SAMPLE_RATE // MEDIA_FPS):  # idle face before the speech
                stream.push_audio(voice, speech=speech)  # a shorter clip cuts the speech
                stream.end_of_segment()
            img = stream.next_frame().image
            for pkt in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                box.mux(pkt)
        for pkt in v.encode(None):
            box.mux(pkt)
    return path


def make_video_avatar(
    name: str, avatars_dir: Path, weights: Path | None, seconds: float = 6.0
) -> Path:
    """``make_talking_clip`` prepared as a video avatar ``avatars_dir/<name>``."""
    import tempfile

    from tools.avatar_prepare import prepare_avatar

    with tempfile.TemporaryDirectory() as tmp:
        clip = make_talking_clip(Path(tmp) / f"{name}.mp4", weights, seconds)
        info = prepare_avatar(name, clip, "video", avatars_dir)
    return info.path


def evaluate(weights: Path, avatar: str | None = None) -> tuple[dict, list[Rendered]]:
    from models.avatar.model import PhotoAvatarModel
    from models.tts.kokoro import KOKORO_MODEL_FILE, KOKORO_VOICES_FILE, KokoroSynthesizer

    tts = KokoroSynthesizer(
        weights / "kokoro" / KOKORO_MODEL_FILE, weights / "kokoro" / KOKORO_VOICES_FILE
    )
    model = PhotoAvatarModel(weights)
    name = avatar or model.default
    items: list[Rendered] = []
    fallback: list[Rendered] = []
    starts_err: list[float] = []
    for lang, text in SENTENCES:
        stream = model.new_stream(name, seed=7)
        speech = tts.synthesize(text, lang)
        aligned = align_phonemes(tts.phonemize(text, lang), speech.audio, speech.sample_rate)
        truth = list(speech.phonemes) if tts.timed else aligned
        r = render_sentence(stream, speech, lang, text)
        r.gap = measure_gaps(r.frames)
        r.timings = truth
        items.append(r)
        if tts.timed:  # the aligner-driven fallback, judged against Kokoro's spans
            fb = Speech(speech.audio, speech.sample_rate, aligned)
            f = render_sentence(model.new_stream(name, seed=7), fb, lang, text)
            f.gap = measure_gaps(f.frames)
            f.timings = truth
            fallback.append(f)
            real = [(a, b) for p, a, b in truth if p in BILABIALS]
            est = [(a, b) for p, a, b in aligned if p in BILABIALS]
            if len(real) == len(est):
                starts_err += [abs(x[0] - y[0]) * 1000 for x, y in zip(real, est, strict=True)]
    mode = "video" if type(stream).__name__ == "VideoAvatarStream" else "photo"
    results: dict = {"avatar": name, "mode": mode, "timed": tts.timed}
    if mode == "video":  # the clip's lip gaps: closed, resting, widest
        assets = model.assets(name)
        for key in ("gap_closed", "gap_rest", "gap_open"):
            results[key] = float(getattr(assets, key))
    results.update(_figures(items))
    if fallback:
        results["fallback"] = _figures(fallback)["all"]
        results["fallback"]["bilabial_start_err_ms"] = float(np.median(starts_err))
    ms = np.concatenate([r.render_ms for r in items])
    results["render_ms_median"] = float(np.median(ms))
    results["render_ms_p95"] = float(np.percentile(ms, 95))
    results["face_found"] = float(np.mean([np.mean(~np.isnan(r.gap)) for r in items]))
    return results, items


def _figures(items: list[Rendered]) -> dict:
    results: dict = {}
    for key, subset in (
        ("all", items),
        ("en", [r for r in items if r.lang == "en"]),
        ("zh", [r for r in items if r.lang == "zh"]),
    ):
        pairs = []
        for r in subset:
            n = r.audio.size // (MEDIA_SAMPLE_RATE // RATE)
            pairs.append((_mouth_100hz(r.gap, n), _envelope(r.audio, n)))
        lag, corr, _ = lag_and_corr(pairs)
        # For reference only: the same with each sentence's envelope scaled to
        # its own 95th percentile (the en and zh voices differ in level).
        matched = [(m, e / max(float(np.percentile(e, 95)), 1e-9)) for m, e in pairs]
        _, corr_matched, _ = lag_and_corr(matched)
        closed = total = 0
        for r in subset:
            c, t = bilabial_closure(r)
            closed, total = closed + c, total + t
        results[key] = {
            "lag_ms": lag,
            "corr": corr,
            "corr_level_matched": corr_matched,
            "env_p95": float(np.median([np.percentile(e, 95) for _, e in pairs])),
            "bilabial_closed": closed,
            "bilabials": total,
            "closed_share": closed / max(1, total),
        }
    return results


def figure_rows(results: dict) -> list[str]:
    """Markdown table rows (all, en, zh) of lag, correlation and bilabial closure."""
    rows = []
    for key in ("all", "en", "zh"):
        r = results[key]
        rows.append(
            f"| {key} | {r['lag_ms']:+.0f} | {r['corr']:.2f} | "
            f"{r['bilabial_closed']}/{r['bilabials']} ({100 * r['closed_share']:.0f} %) |"
        )
    return rows


VIDEO_BEGIN, VIDEO_END = "<!-- video mode -->", "<!-- /video mode -->"
VIDEO_NOTE = (
    "The video avatar measured here was not recorded from a person (none is available "
    "offline): it is a 6 s clip of our own photo renderer (the astronaut) speaking real "
    "Kokoro TTS audio, written as MP4 and prepared like any uploaded clip "
    "(`python -m evals.lipsync --make-video-avatar NAME` builds it, "
    "`evals.lipsync.make_talking_clip`). Its frames hold many real mouth openings, but "
    "rendered ones, so these figures show that the mouth selection and blending follow "
    "the track, not how a recorded face would look."
    " This clip's resting mouth (the astronaut's smile with teeth) reads as a lip gap "
    "of {rest_gap:.2f} of the mouth width to FaceMesh (its most closed mouth "
    "{closed_gap:.2f}, its widest {open_gap:.2f}). The selection treats it as the "
    "clip's rest: a target's opening is measured up from that resting gap and its "
    "closure down from it to the clip's most closed mouth "
    "(models/avatar/video.py `target_gap`), so quiet stretches and p/b/m pick closed "
    "frames; after a reply the idle clip shows the smile again, which still reads as "
    '"open" during the silent tail frames.'
)


def _video_section(text: str) -> str:
    a, b = text.find(VIDEO_BEGIN), text.find(VIDEO_END)
    return text[a : b + len(VIDEO_END)] if 0 <= a < b else ""


def write_doc(results: dict, items: list[Rendered], docs: Path, command: str) -> None:
    """Photo mode rewrites docs/lipsync.md keeping its video-mode section; video
    mode replaces only that section (with its own contact sheet and MP4)."""
    docs.mkdir(parents=True, exist_ok=True)
    video = results.get("mode") == "video"
    prefix = "lipsync_video" if video else "lipsync"
    doc = docs / "lipsync.md"
    old = doc.read_text(encoding="utf-8") if doc.is_file() else ""
    en = [r for r in items if r.lang == "en"]
    contact_sheet(en[0], docs / f"{prefix}_sheet.png")
    write_mp4(en[:2], docs / f"{prefix}_en.mp4")

    def ok(v: bool) -> str:
        return "yes" if v else "**no**"

    lines = [
        "## Video mode" if video else "# Lip-sync measured",
        "",
        f"Command: `{command}` on {platform.machine()} / {platform.processor() or 'cpu'}, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}. Avatar "
        f"`{results['avatar']}` ({results['mode']} mode); real Kokoro TTS; "
        f"{len(SENTENCES)} sentences (4 en, 4 zh, in `evals/lipsync.py`).",
        "",
        "| set | lag (ms, + = mouth after sound) | correlation | bilabials closed |",
        "|---|---|---|---|",
    ]
    lines += figure_rows(results)
    fb = results.get("fallback")
    if fb:
        lines.append(
            f"| fallback: our aligner drives the mouth (all) | {fb['lag_ms']:+.0f} | "
            f"{fb['corr']:.2f} | {fb['bilabial_closed']}/{fb['bilabials']} "
            f"({100 * fb['closed_share']:.0f} %) |"
        )
    a = results["all"]
    spans = (
        "The bilabial spans are Kokoro's own predicted durations (its int8 graph with the "
        "duration tensor exposed as a second output, `kokoro-v1.0.int8.timed.onnx`, "
        "models/tts/kokoro_timing.py; the audio is sample-equal to the plain graph's), i.e. "
        "where the TTS itself put each p/b/m, at 25 ms resolution, moved 50 ms earlier "
        "(models/phonemes.py KOKORO_SHIFT_S: the audio's loudness matches the vowel spans "
        "best 50-70 ms before them). They also drive the "
        "mouth in the rows en/zh/all, so those rows check the renderer and FaceMesh "
        "against the TTS's timing. The fallback row drives the mouth with our phoneme "
        "aligner (models/phonemes.py, used when the timed graph is missing) and scores it "
        "against Kokoro's spans; the aligner's p/b/m starts are off by "
        f"{fb['bilabial_start_err_ms']:.0f} ms (median) from Kokoro's."
        if fb
        else "The bilabial spans come from our own phoneme aligner (models/phonemes.py; the "
        "timed Kokoro graph was not found), the same timings that drive the mouth, so "
        "this checks that the renderer closes the lips when asked and that FaceMesh sees "
        "it; it does not check the aligner against the audio."
    )
    lines += [
        "",
        f"Targets: lag within +-40 ms: {ok(abs(a['lag_ms']) <= 40)}; correlation >= 0.6: "
        f"{ok(a['corr'] >= 0.6)}; bilabials closed >= 80 %: {ok(a['closed_share'] >= 0.8)}.",
        f"Rendering: {results['render_ms_median']:.2f} ms/frame median, "
        f"{results['render_ms_p95']:.2f} ms p95 (one core, 512x512). FaceMesh found the face "
        f"in {100 * results['face_found']:.0f} % of the frames.",
        "",
        "How it is measured: FaceMesh (mediapipe 0.10.21, tracking mode) on every rendered "
        "frame; mouth opening = inner-lip distance (landmarks 13-14) / mouth width (61-291); "
        "audio envelope = RMS of the frames' own audio over 40 ms windows; both at 100 Hz, "
        "lag searched over +-200 ms with parabolic refinement, correlation pooled over all "
        f"sentences. A bilabial counts as closed when some frame within its span (+-20 ms) "
        f"has an inner-lip gap below {CLOSED_GAP} of the mouth width. {spans}",
        "",
        "The pooled correlation (all) mixes two voices of different level (the zh "
        "sentences' envelope peaks are "
        f"{20 * np.log10(results['zh']['env_p95'] / results['en']['env_p95']):+.1f} dB from "
        "the en ones', median 95th percentiles), while the mouth follows each reply's own "
        "loudness. For reference only (the table keeps the pooled figure): with each "
        "sentence's envelope scaled to its own 95th percentile the correlation is "
        f"{a['corr_level_matched']:.2f} (en {results['en']['corr_level_matched']:.2f}, "
        f"zh {results['zh']['corr_level_matched']:.2f}).",
        "",
        f"![contact sheet]({prefix}_sheet.png)",
        "",
        f'Contact sheet: "{en[0].text}" (labels: time, phoneme). '
        f"Video with sound: [{prefix}_en.mp4]({prefix}_en.mp4).",
        "",
    ]
    if video:
        note = VIDEO_NOTE.format(
            rest_gap=results.get("gap_rest", float("nan")),
            closed_gap=results.get("gap_closed", float("nan")),
            open_gap=results.get("gap_open", float("nan")),
        )
        section = "\n".join([VIDEO_BEGIN, *lines, note, "", VIDEO_END])
        head = old.replace(_video_section(old), "").rstrip() if old else "# Lip-sync measured"
        text = head + "\n\n" + section + "\n"
    else:
        section = _video_section(old) or "\n".join(
            [VIDEO_BEGIN, "## Video mode", "", "Not measured yet.", VIDEO_END]
        )
        text = "\n".join(lines) + "\n" + section + "\n"
    doc.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="videochat eval lipsync")
    parser.add_argument("--weights", default="weights")
    parser.add_argument("--avatar", default=None)
    parser.add_argument("--docs", default="docs", help="where lipsync.md and media go")
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument(
        "--make-video-avatar",
        metavar="NAME",
        help="first build the test video avatar NAME (make_talking_clip) in WEIGHTS/avatars",
    )
    args = parser.parse_args(argv)
    if args.make_video_avatar:
        w = Path(args.weights)
        make_video_avatar(args.make_video_avatar, w / "avatars", w)
        print(f"prepared {w / 'avatars' / args.make_video_avatar}")
    import sys

    flags = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m evals.lipsync", *flags])
    return run(Path(args.weights), args.avatar, Path(args.docs), not args.no_doc, command)


def run(
    weights: Path, avatar: str | None, docs: Path, write: bool, command: str | None = None
) -> int:
    results, items = evaluate(weights, avatar)
    for key in ("all", "en", "zh"):
        r = results[key]
        print(
            f"{key}: lag {r['lag_ms']:+.0f} ms, corr {r['corr']:.2f}, bilabials closed "
            f"{r['bilabial_closed']}/{r['bilabials']} ({100 * r['closed_share']:.0f} %)"
        )
    fb = results.get("fallback")
    if fb:
        print(
            f"fallback (aligner-driven): lag {fb['lag_ms']:+.0f} ms, corr {fb['corr']:.2f}, "
            f"bilabials closed {fb['bilabial_closed']}/{fb['bilabials']} "
            f"({100 * fb['closed_share']:.0f} %), p/b/m start error "
            f"{fb['bilabial_start_err_ms']:.0f} ms median"
        )
    print(f"render {results['render_ms_median']:.2f} ms/frame median")
    if write:
        if command is None:
            command = "videochat eval lipsync" + (f" --avatar {avatar}" if avatar else "")
        write_doc(results, items, docs, command)
        print(f"wrote {docs / 'lipsync.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
