"""The benchmark's pure measurement functions (no server, no models)."""

from __future__ import annotations

import math

import numpy as np

from bench.analysis import (
    edit_distance,
    first_moving_mouth,
    frame_stats,
    mouth_crop,
    pct,
    stall_time,
    stalls,
    tokens,
)


def test_edit_distance_and_tokens():
    assert edit_distance([], []) == 0
    assert edit_distance(list("abc"), list("abc")) == 0
    assert edit_distance(list("kitten"), list("sitting")) == 3
    assert edit_distance(["a", "b"], []) == 2
    assert tokens("What is the capital of France?", "en") == [
        "what",
        "is",
        "the",
        "capital",
        "of",
        "france",
    ]
    assert tokens("中国的首都 是哪里？", "zh") == list("中国的首都是哪里")
    ref, hyp = tokens("你能推荐一本好书吗？", "zh"), tokens("你能腿肩已笨耗属吗?", "zh")
    assert edit_distance(ref, hyp) == 6


def test_pct_ignores_nan():
    assert pct([1.0, float("nan"), 3.0], 50) == 2.0
    assert math.isnan(pct([], 50))


def audio_track(loud_spans: list[tuple[float, float]], end: float) -> list[tuple[float, float]]:
    """(time, rms) every 20 ms; loud inside the spans."""
    out = []
    for i in range(int(end / 0.02)):
        t = i * 0.02
        out.append((t, 0.1 if any(a <= t < b for a, b in loud_spans) else 0.0))
    return out


def test_stall_counts_only_silence_beyond_the_natural_pause():
    # Two sentences 300 ms apart: a natural pause, no stall.
    audio = audio_track([(1.0, 2.0), (2.3, 3.0)], 4.0)
    assert stall_time(audio, 0.0, 4.0) == 0.0
    # A second sentence 1 s late: 1 s of silence, 0.65 s beyond the pause.
    audio = audio_track([(1.0, 2.0), (3.0, 3.5), (3.8, 4.0)], 5.0)
    assert abs(stall_time(audio, 0.0, 5.0) - 0.65) < 0.03
    # ... which starts 1 s into the reply.
    [(where, excess)] = stalls(audio, 0.0, 5.0)
    assert abs(where - 1.0) < 0.03 and abs(excess - 0.65) < 0.03
    # Silence before the reply starts or after it ends is not a stall.
    assert stall_time(audio_track([(2.0, 3.0)], 6.0), 0.0, 6.0) == 0.0


def test_frame_stats():
    times = [i * 0.04 for i in range(51)]  # 25 fps for 2 s
    times.insert(30, 1.18)  # one extra
    del times[40:43]  # a 160 ms hole
    fps, gap = frame_stats(times, 0.0, 2.0)
    assert 22 < fps < 25
    assert abs(gap - 0.16) < 1e-6
    assert frame_stats([1.0], 0.0, 2.0)[0] == 0.0


def face(mouth_open: float, sway: int, noise: np.random.Generator) -> np.ndarray:
    """A 256x256 grey 'face': textured skin, a mouth that opens, the head swaying."""
    yy, xx = np.mgrid[0:256, 0:256]
    img = 120 + 30 * np.sin(xx / 7.0) * np.cos(yy / 9.0)
    cy, cx = 170, 128 + sway
    lips = (np.abs(yy - cy) < 3 + 14 * mouth_open) & (np.abs(xx - cx) < 28)
    img[lips] = 40
    img[(np.abs(yy - cy) < 3) & (np.abs(xx - cx) < 30)] = 80  # closed lips line
    img += noise.normal(0, 1.5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_first_moving_mouth_ignores_sway_and_finds_the_opening():
    rng = np.random.default_rng(0)
    sways = [int(round(2 * math.sin(i / 6))) for i in range(80)]
    idle = [mouth_crop(face(0.0, s, rng)) for s in sways[:40]]
    # After the end of speech (t = 0): 10 still frames swaying, then the mouth moves.
    frames = []
    for i in range(25):
        opening = 0.0 if i < 10 else 0.6 * abs(math.sin(i / 2))
        frames.append((i * 0.04, mouth_crop(face(opening, sways[40 + i], rng))))
    first = first_moving_mouth(idle, frames, after=0.0)
    assert first is not None
    assert 0.36 <= first <= 0.48  # frame 10 or 11 (sin(5) ~ 0.96: wide open at once)
    # No motion at all: nothing found.
    still = [(i * 0.04, mouth_crop(face(0.0, sways[40 + i], rng))) for i in range(20)]
    assert first_moving_mouth(idle, still, after=0.0) is None
    assert first_moving_mouth([], frames, after=0.0) is None


# ------------------------------------------------ answers stay right (bench/answers.py)

from bench import answers  # noqa: E402


def test_answer_keys_match_words_case_insensitively():
    assert answers.is_right("Sure, the capital of France is PARIS.", {"paris"})
    assert answers.is_right("Spiders have 8 legs.", {"eight", "8"})
    assert answers.is_right("Spiders have eight legs.", {"eight", "8"})
    assert answers.is_right("A day has twenty-four hours.", {"twenty four", "24"})
    assert answers.is_right("A day has twenty four hours.", {"twenty-four"})
    # Whole words only for Latin and digit keys.
    assert not answers.is_right("There are eighteen of them.", {"eight"})
    assert not answers.is_right("It was 17 degrees.", {"7"})
    assert not answers.is_right("Hmm, I don't see the capital of France.", {"paris"})
    assert not answers.is_right("", {"paris"})
    # Chinese keys anywhere; full-width digits count as digits.
    assert answers.is_right("嗯，蜘蛛有八条腿。", {"八", "8"})
    assert answers.is_right("一天有２４个小时。", {"二十四", "24"})
    assert not answers.is_right("嗯，我不太清楚。", {"巴黎"})
    assert answers.is_right("我叫Mei，很高兴认识你！", {"Mei"})
    assert answers.is_right("I'm mei, nice to meet you.", {"Mei"})
    assert not answers.is_right("I'm Meiling.", {"Mei"})


def test_question_set_covers_both_languages_and_never_gives_the_answer_away():
    for lang in ("en", "zh"):
        facts = [q for q in answers.QUESTIONS if q.lang == lang and q.kind == "fact"]
        persona = [q for q in answers.QUESTIONS if q.lang == lang and q.kind == "persona"]
        assert len(facts) >= 10
        assert [q.keys for q in persona] == [frozenset({"Mei"})]
    for q in answers.QUESTIONS:
        assert q.keys and not answers.is_right(q.text, q.keys), q.text
        assert answers.language_holds(q.text, q.lang), q.text


def test_language_rule():
    assert answers.language_holds("嗯，法国的首都是巴黎。", "zh")
    assert answers.language_holds("我叫Mei，是一个双语数字人。", "zh")  # a name is fine
    assert not answers.language_holds("The capital of France is Paris.", "zh")
    assert not answers.language_holds("Sure, 巴黎 is the capital of France.", "zh")
    assert not answers.language_holds("", "zh")
    assert answers.language_holds("Sure, the capital of France is Paris.", "en")
    assert not answers.language_holds("Sure, the capital is 巴黎.", "en")
    assert not answers.language_holds("Sure，the capital is Paris.", "en")  # full-width comma
    assert not answers.language_holds("   ", "en")
    assert answers.language_holds("我叫 Mei， Mei。", "zh")  # measured: the name twice
    assert not answers.language_holds("My name is Mei.", "zh")
    assert answers.han_share("我叫Mei") == 1.0
    assert answers.han_share("我叫Mei, nice") == 2 / 3
    assert math.isnan(answers.han_share("123"))


def test_tiers_and_modes():
    assert answers.parse_tier("LLM__THREADS=2, VIDEOCHAT_ASR__MODEL=whisper-small") == {
        "VIDEOCHAT_LLM__THREADS": "2",
        "VIDEOCHAT_ASR__MODEL": "whisper-small",
    }
    assert answers.tier_label({}) == "default"
    assert answers.tier_label({"VIDEOCHAT_LLM__THREADS": "2"}) == "LLM__THREADS=2"
    assert answers.modes(None) == [
        ("default", "on", {answers.OPENERS_ENV: "true"}),
        ("default", "off", {answers.OPENERS_ENV: "false"}),
    ]
    # A tier's own openers setting is replaced by the on/off of each mode.
    tier = {"VIDEOCHAT_LLM__THREADS": "2", answers.OPENERS_ENV: "false"}
    [(label, on, env_on), (_, off, env_off)] = answers.modes([tier])
    assert (label, on, off) == ("LLM__THREADS=2", "on", "off")
    assert env_on == {"VIDEOCHAT_LLM__THREADS": "2", answers.OPENERS_ENV: "true"}
    assert env_off[answers.OPENERS_ENV] == "false"


def _rows() -> list[dict]:
    rows = []
    for openers in ("on", "off"):
        for q, reply in [
            (answers.QUESTIONS[0], "Sure, it's Paris."),
            (answers.QUESTIONS[1], "Hmm, spiders have six | legs. " + "x" * 100),
            (answers.QUESTIONS[12], "I'm Mei."),
            (answers.QUESTIONS[13], "嗯，是巴黎。"),
            (answers.QUESTIONS[-1], "我是一个由阿里云开发的人工智能助手"),
        ]:
            rows.append({**answers.grade(q, reply), "tier": "default", "openers": openers})
    return rows


def test_report_section():
    text = answers.report_section(_rows(), 321.4)
    assert text.startswith(answers.SECTION + "\n")
    assert "Wall time: **321 s** (10 replies, 2 server starts)" in text
    assert "| default | on | en | 1 / 2 (50 %) | yes | 3 / 3 |" in text
    assert "| default | off | zh | 1 / 1 (100 %) | no | 2 / 2 |" in text
    # Every question: replies escaped and cut to 80 characters.
    assert "| Hmm, spiders have six \\| legs. xxx" in text
    long_row = next(line for line in text.splitlines() if "spiders have six" in line)
    reply_cell = long_row.split(" | ")[4]
    assert len(reply_cell) <= 81 and reply_cell.endswith("…")
    assert text.count("| **no** |") == 4  # wrong: the spider (x2) and the zh persona (x2)


def test_splice_replaces_only_the_answers_section():
    section = answers.report_section(_rows(), 10.0)
    doc = "# Benchmarks\n\nintro\n\n## Plots\n\nplots\n"
    once = answers.splice(doc, section)
    assert once.startswith(doc) and once.endswith(section)
    newer = answers.report_section(_rows(), 99.0)
    assert answers.splice(once, newer) == doc + "\n" + newer
    middle = doc + "\n" + section + "\n## Lip-sync\n\nfigures\n"
    spliced = answers.splice(middle, newer)
    assert "Wall time: **99 s**" in spliced and "Wall time: **10 s**" not in spliced
    assert spliced.endswith("\n## Lip-sync\n\nfigures\n")
    assert answers.splice("", section) == section
