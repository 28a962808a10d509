"""The benchmark's pure measurement functions (no server, no models)."""

from __future__ import annotations

import math

import numpy as np

from bench.analysis import (
    admission_ok,
    admission_text,
    answer_proper,
    edit_distance,
    evaluate_targets,
    first_moving_mouth,
    frame_stats,
    is_fast_kind,
    longest_silence,
    mouth_crop,
    pct,
    silences,
    stall_time,
    stall_time_after,
    stalls,
    target_table,
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


def test_answer_proper_adds_the_servers_opener_time_to_the_clients_first_audio():
    # Opener sent 0.90 s after the server's end of speech, the answer 0.70 s later.
    latency = {"first_audio_sent": 0.90, "answer_audio_sent": 1.60, "asr_final": 0.3}
    assert abs(answer_proper(1.05, latency) - 1.75) < 1e-9
    # No opener or filler: the answer is the first audio.
    assert answer_proper(1.05, {"first_audio_sent": 0.9, "answer_audio_sent": 0.9}) == 1.05
    # A mark or the client's first audio missing: not measured.
    assert math.isnan(answer_proper(1.05, {"first_audio_sent": 0.9}))
    assert math.isnan(answer_proper(1.05, {"answer_audio_sent": 0.9}))
    assert math.isnan(answer_proper(float("nan"), latency))


def test_longest_silence_inside_a_reply():
    # Opener 1.0-1.4 s, 0.6 s of silence, answer 2.0-3.0 s, a 0.3 s pause, 3.3-4.0 s;
    # silence before the reply and after it is not inside it.
    audio = audio_track([(1.0, 1.4), (2.0, 3.0), (3.3, 4.0)], 6.0)
    silence, where = longest_silence(audio, 0.0, 6.0)
    assert abs(silence - 0.6) < 0.03 and abs(where - 0.4) < 0.03
    assert [round(s, 2) for _, _, s in silences(audio, 0.0, 6.0)] == [0.6, 0.3]
    # A pause between sentences longer than the wait after the opener.
    audio = audio_track([(1.0, 1.4), (1.6, 2.5), (3.7, 4.0)], 5.0)
    silence, where = longest_silence(audio, 0.0, 5.0)
    assert abs(silence - 1.2) < 0.03 and abs(where - 1.5) < 0.03
    # One unbroken reply: no silence; no reply audio at all: not measured.
    assert longest_silence(audio_track([(1.0, 3.0)], 4.0), 0.0, 4.0) == (0.0, 0.0)
    assert math.isnan(longest_silence(audio_track([], 4.0), 0.0, 4.0)[0])
    # The window: only frames in [start, end] count.
    audio = audio_track([(1.0, 1.4), (2.0, 3.0), (4.5, 5.0)], 6.0)
    assert abs(longest_silence(audio, 0.0, 3.5)[0] - 0.6) < 0.03


def test_stall_after_the_answer_starts_leaves_out_the_wait_after_the_opener():
    # Opener 1.0-1.4 s, 0.8 s wait, answer from 2.2 s; a 1.0 s stall at 3.0-4.0 s.
    audio = audio_track([(1.0, 1.4), (2.2, 3.0), (4.0, 4.5)], 6.0)
    whole = stall_time(audio, 0.0, 6.0)
    assert abs(whole - ((0.8 - 0.35) + (1.0 - 0.35))) < 0.04
    # The client's estimate of the answer's start may be off by a frame or two.
    for answer_start in (2.1, 2.2, 2.3):
        after = stall_time_after(audio, 1.0, answer_start, 6.0)
        assert abs(after - 0.65) < 0.03, answer_start
    # No opener: the answer starts with the reply, every stall counts.
    audio = audio_track([(1.0, 2.0), (3.0, 3.5)], 5.0)
    assert abs(stall_time_after(audio, 1.0, 1.0, 5.0) - stall_time(audio, 1.0, 5.0)) < 1e-9
    # Natural pauses only: nothing; the answer never started: not measured.
    assert stall_time_after(audio_track([(1.0, 2.0), (2.3, 3.0)], 4.0), 0.0, 1.0, 4.0) == 0.0
    assert math.isnan(stall_time_after(audio, 0.0, float("nan"), 5.0))


def _bench_row(scenario: str, lang: str, first: float, answer: float, **extra) -> dict:
    return {
        "scenario": scenario,
        "lang": lang,
        "prompt": "p",
        "heard": "p",
        "first_audio": first,
        "answer_audio": answer,
        "first_mouth": first + 0.05,
        "longest_silence": 0.4,
        "longest_silence_at": 0.5,
        "stall": 0.1,
        "stalls": [(0.5, 0.1)],
        "stall_answer": 0.0,
        "stages": {"first_audio_sent": first - 0.1, "answer_audio_sent": answer - 0.1},
        "playback": {"longest_gap": 0.5, "longest_gap_in_answer": 0.12},
        "errors": 0,
        "ref_len": 5,
        "fps": 25.0,
        "max_gap": 0.06,
        "max_gap_net": 0.05,
        "bot": "Sure, Paris.",
        **extra,
    }


ADMITTED = {
    "limit": 1,
    "admitted": 1,
    "refused": True,
    "status": 503,
    "retry_after": "30",
    "message": "This server is busy",
    "answered": 1,
    "right": 1,
}


def test_targets_and_their_table():
    rows = [
        _bench_row("1 session", "en", 1.0, 2.5),
        _bench_row("1 session", "en", 1.1, 2.6, longest_silence=1.3, stall_answer=0.9),
        _bench_row("1 session", "zh", 1.4, 2.2),
        _bench_row("2 sessions", "en", 1.6, 2.9),
    ]
    answer_rows = [
        {"tier": "default", "openers": o, "kind": "fact", "right": r}
        for o, rights in (("on", [True] * 9 + [False]), ("off", [True] * 10))
        for r in rights
    ]
    targets = evaluate_targets(rows, [0.2, 0.22], int(3.2e9), "AVX2", 1, ADMITTED, answer_rows)
    by_name = {name: (measured, met) for name, measured, met in targets}
    assert by_name["en first reply audio p50 <= 1.2 s"] == (
        "1 session 1.05 s; 2 sessions 1.60 s",
        False,
    )
    assert by_name["zh first reply audio p50 <= 1.5 s"] == ("1 session 1.40 s", True)
    # AVX2 only: the slow kind's 3.0 s.
    measured, met = by_name["answer proper p50 <= 3.0 s (AVX2: no AVX-512)"]
    assert met is True and measured.startswith("en: 1 session 2.55 s; 2 sessions 2.90 s")
    measured, met = by_name["no silence > 1.0 s inside any reply (client)"]
    assert met is False and "1 of 4 replies" in measured and "longest 1.30 s" in measured
    measured, met = by_name["stalls after the answer starts p90 <= 0.3 s"]
    assert met is False and measured == "1 session 0.72 s; 2 sessions 0.00 s"
    measured, met = by_name["answers right >= 90 %, no lower with openers"]
    assert met is False  # 90 % with openers, but 100 % without
    assert measured == "default: openers on 9/10 (90 %), openers off 10/10 (100 %)"
    assert by_name["peak RSS <= 3.5 GB (server, all models loaded)"] == ("3.20 GB (2.98 GiB)", True)
    measured, met = by_name["capacity reported (and enforced)"]
    assert met is True
    assert measured == (
        "1 conversation (plan.capacity); admitted 1 of 2, extra refused: yes, "
        "admitted sessions answered: 1/1"
    )
    table = target_table(targets)
    assert table[:2] == ["| target | measured | status |", "|---|---|---|"]
    assert len(table) == 2 + len(targets)
    assert "| zh first reply audio p50 <= 1.5 s | 1 session 1.40 s | met |" in table
    assert sum("| **not met** |" in line for line in table) == 4
    # The fast kind's 2.0 s; nothing measured: "not measured", never "met".
    targets = evaluate_targets([], kind="AVX-512 VNNI", capacity=None)
    names = [name for name, _, _ in targets]
    assert "answer proper p50 <= 2.0 s (AVX-512 VNNI: AVX-512)" in names
    statuses = {name: met for name, _, met in targets}
    assert statuses["capacity reported"] is False
    assert all(met is None for name, met in statuses.items() if name != "capacity reported")
    assert all(line.endswith("| not measured |") for line in target_table(targets)[2:-1])


def test_cpu_kind_and_admission():
    assert is_fast_kind("AVX-512 VNNI") and is_fast_kind("AVX-512")
    assert not is_fast_kind("AVX2") and not is_fast_kind("AVX-VNNI") and not is_fast_kind(None)
    assert admission_ok(ADMITTED)
    assert not admission_ok({**ADMITTED, "refused": False})
    assert not admission_ok({**ADMITTED, "answered": 0})
    assert not admission_ok({**ADMITTED, "limit": 2})
    text = admission_text({"limit": 2, "admitted": 2, "refused": False, "answered": 1})
    assert text == "admitted 2 of 3, extra refused: no, admitted sessions answered: 1/2"


def test_report_renders_machine_targets_and_reply_audio(tmp_path):
    from bench.__main__ import cpu_kind, report

    assert cpu_kind({"model": "x", "flags": ["avx2", "fma"], "cores": 2}) == "AVX2"
    assert cpu_kind({"flags": ["avx2", "avx512f", "avx512_vnni"]}) == "AVX-512 VNNI"
    rows = [
        _bench_row("1 session", "en", 1.0, 2.5),
        _bench_row("1 session", "zh", 1.4, 1.4, longest_silence=0.0),
    ]
    info = {"summary": "This machine: AMD EPYC, 2 cores.", "kind": "AVX2", "capacity": 1}
    out = tmp_path / "bench.md"
    text = report(
        rows,
        ([0.2], [0.1], [0.2]),
        {"1 session": {"cpu": 10.0, "wall": 20.0, "sessions": 1}},
        int(3.0e9),
        "python -m bench --quick",
        out,
        [],
        machine_info=info,
        admission=ADMITTED,
        skipped=[2],
    )
    assert out.read_text(encoding="utf-8") == text
    assert "CPU kind **AVX2** (the server's calibration), holds 1 conversation." in text
    assert "## This machine\n\nThis machine: AMD EPYC, 2 cores.\n" in text
    assert "holds 1 conversation, so the 2-session rows are not run." in text
    assert "admitted 1 of 2, extra refused: yes, admitted sessions answered: 1/1" in text
    assert text.index("## Against the targets") < text.index("## End of speech")
    assert "| 1 session | all | 2 | 1.95 / 2.44 / 2.50 | 0.75 |" in text
    assert (
        "| 1 session | zh | 1 | 1.40 / 1.40 / 1.40 | 0.00 | 0.00 / 0.00 / 0.00 | 0 of 1 |" in text
    )
    assert "| 1.00 | 2.50 | 1.05 | 0.40 (@0.5) | 0.10 (0.10@0.5) | 0.00 |" in text
    # No calibration: said so, nothing breaks.
    text = report(rows, ([], [], []), {}, 0, "c", out, [])
    assert "CPU kind **unknown**" in text and "(no /api/machine summary)" in text


def test_busy_offer_keeps_retry_after_and_message():
    import httpx

    from bench.client import Busy

    request = httpx.Request("POST", "http://127.0.0.1:1/offer")
    response = httpx.Response(
        503, headers={"Retry-After": "30"}, json={"detail": "This server is busy"}, request=request
    )
    busy = Busy(response)
    assert isinstance(busy, httpx.HTTPStatusError)  # tests/test_server.py expects that
    assert busy.response.status_code == 503
    assert (busy.retry_after, busy.message) == ("30", "This server is busy")


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


def test_a_new_report_keeps_the_sections_other_commands_wrote(tmp_path):
    from bench.__main__ import LEVERS, SOAK_SECTION, kept_levers, kept_section

    old = tmp_path / "benchmarks.md"
    old.write_text(
        f"# Benchmarks\n\nfigures\n\n{LEVERS}\n\nlever table\n\n{SOAK_SECTION}\n\nsoak table\n",
        encoding="utf-8",
    )
    assert kept_levers(old).strip() == f"{LEVERS}\n\nlever table"
    assert kept_section(old, SOAK_SECTION).strip() == f"{SOAK_SECTION}\n\nsoak table"
    assert kept_section(tmp_path / "missing.md", SOAK_SECTION) is None


def test_a_run_on_one_kind_keeps_the_other_kinds_figures(tmp_path):
    from bench.__main__ import report

    rows = [_bench_row("1 session", "en", 1.0, 2.5)]
    out = tmp_path / "bench.md"

    def run(kind: str, emulated: str | None = None) -> str:
        info = {"summary": f"This machine: {kind} summary.", "kind": kind, "capacity": 1}
        return report(
            rows, ([0.2], [0.1], [0.2]), {}, int(3.0e9), f"bench on {kind}", out, [],
            machine_info=info, emulated=emulated,
        )

    # A report from before the section existed: its own run becomes its entry.
    run("AVX2")
    text = out.read_text(encoding="utf-8").replace("## Both machine kinds", "## Old heading")
    out.write_text(text.replace("### AVX2:", "### Old entry:"), encoding="utf-8")
    text = run("AVX-512 VNNI")
    assert "### AVX-512 VNNI: measured, run on" in text
    assert "### AVX2: measured, run on" in text and "This machine: AVX2 summary." in text
    assert text.index("### AVX-512 VNNI") < text.index("### AVX2")
    # The next run on a kind replaces that kind's entry only.
    text = run("AVX2", emulated="slow-cpu 0.4")
    assert text.count("### AVX2:") == 1 and "### AVX2: emulated on a faster machine" in text
    assert "### AVX-512 VNNI: measured" in text and "This machine: AVX-512 VNNI summary." in text
    assert "CPU kind **AVX2** (the server's calibration), holds 1 conversation, emulated" in text
