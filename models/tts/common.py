"""What every synthesizer shares: the language a sentence is spoken in."""

from __future__ import annotations

from core.lang import detect_lang


def normalize_lang(lang: str | None, text: str) -> str:
    """ "en" or "zh" for ``lang`` ("zh-CN", "EN", ...), detected from ``text``
    when None, "" or "auto"."""
    if lang is None or lang in ("", "auto"):
        return detect_lang(text)
    lang = lang.lower()
    if lang.startswith("zh"):
        return "zh"
    if lang.startswith("en"):
        return "en"
    raise ValueError(f"unsupported language {lang!r}: use 'en' or 'zh'")
