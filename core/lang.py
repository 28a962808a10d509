"""Which language a piece of text is in (en or zh): used by ASR to label a
transcript, by the session to pick a voice, by TTS to split mixed text."""

from __future__ import annotations

import re

# CJK Unified Ideographs (+ extension A and compatibility ideographs).
CJK_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_CHAR = re.compile(f"[{CJK_CHARS}]")
_LATIN_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


def detect_lang(text: str) -> str:
    """ "zh" when CJK characters make up at least half of the text's words,
    counting each CJK character as a word and each Latin word as one; "en"
    otherwise (also for text with neither, e.g. "123")."""
    cjk = len(_CJK_CHAR.findall(text))
    if cjk == 0:
        return "en"
    latin = len(_LATIN_WORD.findall(text))
    return "zh" if cjk >= latin else "en"
