"""Answers stay right: easy factual questions, the persona and the reply language.

Typed questions go over the data channel of a real WebRTC session (the
benchmark's aiortc client, loopback only) to a server started for this part;
each reply is what the user heard (`bot_text` of the turn in GET
/api/sessions/{id}). The whole set runs once per mode: openers on (the default
config) and off (`VIDEOCHAT_LLM__USE_OPENERS=false`, server restarted), and
once per tier: extra environment overrides for the server (another config, a
bigger machine), each labelled in the report.

    python -m bench --answers-only [--out FILE] [--answers-tier K=V,K=V ...]

The pure parts (matching, the language rule, the report) need no server.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evals.report import splice_heading

if TYPE_CHECKING:
    from bench.client import Client

SECTION = "## Answers stay right"
OPENERS_ENV = "VIDEOCHAT_LLM__USE_OPENERS"
PERSONA_NAME = "Mei"


@dataclass(frozen=True)
class Question:
    lang: str  # "en" | "zh"
    text: str
    keys: frozenset[str]  # the reply is right when it contains any of them
    kind: str = "fact"  # "fact" | "persona"


def _q(lang: str, text: str, *keys: str, kind: str = "fact") -> Question:
    return Question(lang, text, frozenset(keys), kind)


# Easy facts a 1.5B instruct model knows. No key appears in its own question,
# so a reply that only repeats the question is never right (tests check it).
# The system prompt asks for numbers as words: both forms are accepted.
QUESTIONS: list[Question] = [
    _q("en", "What is the capital of France?", "paris"),
    _q("en", "How many legs does a spider have?", "eight", "8"),
    _q("en", "How many days are there in a week?", "seven", "7"),
    _q("en", "At how many degrees Celsius does water boil?", "hundred", "100"),
    _q("en", "What is the largest planet in our solar system?", "jupiter"),
    _q("en", "What colour is the sky on a clear day?", "blue"),
    _q("en", "What is the capital of Japan?", "tokyo"),
    _q("en", "How many hours are there in a day?", "twenty-four", "twenty four", "24"),
    _q("en", "How many months are there in a year?", "twelve", "12"),
    _q("en", "Which animal is known as the king of the jungle?", "lion", "lions"),
    _q("en", "What is the capital of China?", "beijing"),
    _q("en", "Which planet do we live on?", "earth"),
    _q("en", "What is your name?", PERSONA_NAME, kind="persona"),
    _q("zh", "法国的首都是哪里？", "巴黎"),
    _q("zh", "蜘蛛有几条腿？", "八", "8"),
    _q("zh", "一个星期有几天？", "七", "7"),
    _q("zh", "水在多少摄氏度沸腾？", "一百", "100"),
    _q("zh", "太阳系里最大的行星是哪一颗？", "木星"),
    _q("zh", "晴天的时候天空是什么颜色？", "蓝", "藍"),
    _q("zh", "日本的首都是哪里？", "东京", "東京"),
    _q("zh", "一天有多少个小时？", "二十四", "24"),
    _q("zh", "一年有几个月？", "十二", "12"),
    _q("zh", "哪种动物被称为森林之王？", "狮", "獅", "虎"),
    _q("zh", "中国的首都是哪里？", "北京"),
    _q("zh", "我们住在哪个星球上？", "地球"),
    _q("zh", "你叫什么名字？", PERSONA_NAME, kind="persona"),
]

# --------------------------------------------------------------- matching

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Anything a Chinese reply would show: Han, CJK punctuation, kana, Hangul,
# full-width forms ("，", "？").
_CJK_ANY = re.compile(
    r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]"
)
_LATIN_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


def _normalize(text: str) -> str:
    """NFKC (full-width digits and letters to ASCII), lower case, one space."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def contains_key(reply: str, key: str) -> bool:
    """Case-insensitive; a Latin or digit key must stand as its own word
    ("eight" is not in "eighteen", "7" not in "17"; a space and a hyphen are
    the same); a Chinese key may sit anywhere ("八" in "八条腿")."""
    text, key = _normalize(reply), _normalize(key)
    if not key:
        return False
    if _HAN.search(key):
        return key in text
    words = r"[\s-]+".join(re.escape(w) for w in re.split(r"[\s-]+", key))  # "twenty-four"
    pattern = r"(?<![a-z0-9])" + words + r"(?![a-z0-9])"
    return re.search(pattern, text) is not None


def is_right(reply: str, keys: Sequence[str] | frozenset[str]) -> bool:
    return any(contains_key(reply, key) for key in keys)


def han_share(text: str) -> float:
    """Han characters / (Han characters + Latin words); NaN with neither. The
    assistant's own name (Latin script, a Chinese reply has to write it) is not
    counted as a Latin word."""
    han = len(_HAN.findall(text))
    words = _LATIN_WORD.findall(unicodedata.normalize("NFKC", text))
    latin = sum(1 for w in words if w.lower() != PERSONA_NAME.lower())
    return han / (han + latin) if han + latin else float("nan")


def language_holds(reply: str, lang: str) -> bool:
    """The reply is in the user's language: for zh mostly Chinese (Han
    characters more than half of Han characters plus Latin words, the name
    "Mei" not counted: "我叫 Mei， Mei。" passes), for en no CJK at all (no
    Han, kana, Hangul, CJK or full-width punctuation). An empty reply does not
    hold."""
    if not reply.strip():
        return False
    if lang == "zh":
        share = han_share(reply)
        return share == share and share > 0.5
    return _CJK_ANY.search(reply) is None


def grade(question: Question, reply: str) -> dict[str, Any]:
    return {
        "lang": question.lang,
        "kind": question.kind,
        "question": question.text,
        "keys": sorted(question.keys),
        "reply": reply,
        "right": is_right(reply, question.keys),
        "language": language_holds(reply, question.lang),
    }


# ------------------------------------------------------------------ tiers


def tier_label(env: dict[str, str]) -> str:
    """A short label for a set of server environment overrides."""
    if not env:
        return "default"
    return ", ".join(f"{k.removeprefix('VIDEOCHAT_')}={v}" for k, v in sorted(env.items()))


def parse_tier(spec: str) -> dict[str, str]:
    """Parse "K=V,K=V" into {K: V}; K gets the VIDEOCHAT_ prefix when it has none."""
    env: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"tier entry {part!r} is not KEY=VALUE")
        key = key.strip()
        if not key.upper().startswith("VIDEOCHAT_"):
            key = "VIDEOCHAT_" + key
        env[key.upper()] = value.strip()
    return env


def modes(tiers: Sequence[dict[str, str]] | None) -> list[tuple[str, str, dict[str, str]]]:
    """(tier label, "on"|"off", server env) for every tier, openers on then off."""
    out = []
    for tier in tiers or [{}]:
        base = {k: v for k, v in tier.items() if k != OPENERS_ENV}
        for openers in ("on", "off"):
            env = {**base, OPENERS_ENV: "true" if openers == "on" else "false"}
            out.append((tier_label(base), openers, env))
    return out


# ------------------------------------------------------------ the asking


async def _heard(client: Client, index: int) -> dict[str, Any]:
    """The turn summary (bot_text: what the user heard) from the server."""
    import httpx

    async with httpx.AsyncClient(timeout=10) as http:
        url = f"{client.base_url}/api/sessions/{client.session_id}"
        info = (await http.get(url, headers=client.auth)).json()
    for turn in info.get("turn_log", []):
        if turn.get("index") == index:
            return turn
    return {}


async def ask_session(
    base: str, questions: Sequence[Question], timeout: float = 150.0
) -> list[dict[str, Any]]:
    """One WebRTC session; the questions typed one after the other, each once
    the previous reply has been played (state back to listening)."""
    from bench.client import Client

    client = Client(base, lang="auto")
    await client.connect()
    rows: list[dict[str, Any]] = []
    try:
        await asyncio.sleep(1.0)  # let the media settle
        for question in questions:
            seen = len(client.received.events)
            started = time.perf_counter()
            client.send({"type": "text", "text": question.text})
            try:
                _final, turn = await client.wait_for_reply(since=seen, timeout=timeout)
                await client.wait_for(
                    lambda e: e["type"] == "state" and e["value"] == "listening",
                    30,
                    since=client.index_of(turn),
                )
            except TimeoutError:
                client.send({"type": "interrupt"})
                row = grade(question, "")
                row.update(reply="(no reply in time)", seconds=time.perf_counter() - started)
                rows.append(row)
                print(f"[answers {question.lang}] {question.text} -> timed out", flush=True)
                await asyncio.sleep(2.0)
                continue
            spoken = " ".join(
                e["text"] for _, e in client.received.events[seen:] if e["type"] == "bot_text"
            )
            summary = await _heard(client, turn["index"])
            reply = summary.get("bot_text") or spoken
            row = grade(question, reply)
            row["seconds"] = time.perf_counter() - started
            row["interrupted"] = bool(summary.get("interrupted"))
            rows.append(row)
            print(
                f"[answers {question.lang}] {question.text} -> {reply!r} "
                f"({'right' if row['right'] else 'WRONG'}, {row['seconds']:.1f} s)",
                flush=True,
            )
            await asyncio.sleep(0.5)
    finally:
        await client.close()
    return rows


def chunks(items: Sequence[Question], size: int) -> list[list[Question]]:
    size = max(1, size)
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


async def ask_all(
    base: str,
    questions: Sequence[Question],
    langs: Sequence[str] = ("en", "zh"),
    per_session: int = 6,
) -> list[dict[str, Any]]:
    """A fresh session per language and per ``per_session`` questions, so the
    chat history stays short."""
    rows: list[dict[str, Any]] = []
    for lang in langs:
        for chunk in chunks([q for q in questions if q.lang == lang], per_session):
            rows += await ask_session(base, chunk)
    return rows


async def run_answers(
    tiers: Sequence[dict[str, str]] | None = None,
    langs: Sequence[str] = ("en", "zh"),
    questions: Sequence[Question] = QUESTIONS,
    per_session: int = 6,
) -> tuple[list[dict[str, Any]], float]:
    """Every question, per tier and openers on/off, each mode on its own
    freshly started server (loopback only). Returns (rows, wall seconds)."""
    from bench.launch import running_server
    from server.rtc import offer_loopback_only

    offer_loopback_only()
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for label, openers, env in modes(tiers):
        print(f"answers: tier {label}, openers {openers}: starting the server ...", flush=True)
        with running_server(env=env) as (base, _process):
            mode_start = time.perf_counter()
            for row in await ask_all(base, questions, langs, per_session):
                row.update(tier=label, openers=openers)
                rows.append(row)
            print(f"answers: {time.perf_counter() - mode_start:.0f} s of questions", flush=True)
    return rows, time.perf_counter() - start


# ------------------------------------------------------------------ report


def _cell(text: str, limit: int = 80) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _share(right: int, asked: int) -> str:
    return f"{right} / {asked} ({100 * right / asked:.0f} %)" if asked else "-"


def summary_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (tier, openers, lang): facts right / asked, persona, language rule."""
    out = []
    groups = dict.fromkeys((r["tier"], r["openers"], r["lang"]) for r in rows)
    for tier, openers, lang in groups:
        sub = [r for r in rows if (r["tier"], r["openers"], r["lang"]) == (tier, openers, lang)]
        facts = [r for r in sub if r["kind"] == "fact"]
        persona = [r for r in sub if r["kind"] == "persona"]
        out.append(
            {
                "tier": tier,
                "openers": openers,
                "lang": lang,
                "right": sum(r["right"] for r in facts),
                "asked": len(facts),
                "persona": [r["right"] for r in persona],
                "language": sum(r["language"] for r in sub),
                "replies": len(sub),
            }
        )
    return out


def report_section(rows: Sequence[dict[str, Any]], wall_s: float) -> str:
    """The markdown section for docs/benchmarks.md."""
    tiers = list(dict.fromkeys(r["tier"] for r in rows))
    lines = [
        SECTION,
        "",
        "Easy factual questions, typed over the data channel of a real WebRTC session",
        "(the benchmark's aiortc client, loopback) to a server started for this part;",
        "the reply is what the user heard (`bot_text` of the turn, GET",
        "/api/sessions/{id}), filler and opener included. A reply is **right** when it",
        "contains one of the question's accepted answers (case-insensitive; a Latin or",
        'digit answer as a whole word: "eight"/"8", "八"/"8"). **Persona**: asked its',
        f'name, the reply contains "{PERSONA_NAME}" (the system prompt\'s name).',
        "**Language rule**: a reply to a Chinese question is mostly Chinese (Han",
        "characters more than half of Han characters plus Latin words, the name not",
        "counted), a reply to an English question has no CJK character; counted over",
        "every reply, persona included. Openers **on**: the default config; **off**:",
        f"`{OPENERS_ENV}=false`, server restarted. A fresh session per language and",
        "per six questions keeps the history short.",
        "",
        f"Wall time: **{wall_s:.0f} s** ({len(rows)} replies, "
        f"{len(tiers) * 2 if tiers else 0} server starts).",
        "",
        "| tier | openers | lang | facts right | persona (Mei) | language rule |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary_rows(rows):
        persona = " ".join("yes" if ok else "no" for ok in s["persona"]) or "-"
        lines.append(
            f"| {s['tier']} | {s['openers']} | {s['lang']} | {_share(s['right'], s['asked'])} "
            f"| {persona} | {s['language']} / {s['replies']} |"
        )
    lines += [
        "",
        "### Every question",
        "",
        "| tier | openers | lang | question | reply (heard, first 80 characters) | right "
        "| language |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tier']} | {r['openers']} | {r['lang']} | {_cell(r['question'])} "
            f"| {_cell(r['reply'])} | {'yes' if r['right'] else '**no**'} "
            f"| {'yes' if r['language'] else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def splice(document: str, section: str) -> str:
    """``document`` with its answers section replaced by ``section``:
    `--answers-only` updates only this part."""
    return splice_heading(document, SECTION, section)


# -------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--answers-only",
        action="store_true",
        help="run only the answers check; update its section of --out",
    )
    parser.add_argument(
        "--no-answers", dest="answers", action="store_false", help="skip the answers check"
    )
    parser.add_argument(
        "--answers-tier",
        action="append",
        type=parse_tier,
        default=None,
        metavar="K=V,K=V",
        help="run the answers check with these server env overrides (LLM__THREADS=2 "
        "means VIDEOCHAT_LLM__THREADS=2); repeatable, one run per tier, '' = the config "
        "as is (the default when none is given)",
    )


async def section(args: argparse.Namespace) -> str:
    """Run the answers check as the CLI asked; return its report section."""
    tiers = args.answers_tier or [{}]
    rows, wall = await run_answers(tiers, langs=getattr(args, "langs", ("en", "zh")))
    return "\n" + report_section(rows, wall)


def write_only(out: Path, text: str) -> None:
    """`--answers-only`: put the section into ``out``, leaving the rest as is."""
    try:
        old = out.read_text(encoding="utf-8")
    except OSError:
        old = ""
    out.write_text(splice(old, text.lstrip("\n")), encoding="utf-8")
