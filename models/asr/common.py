"""What every recognizer shares: the languages it is asked for."""

from __future__ import annotations

LANGUAGES = ("en", "zh")


def forced_language(language: str | None) -> str | None:
    """ "en"/"zh" (also "zh-CN", "EN"), or None for auto-detection."""
    if not language or language == "auto":
        return None
    language = language.lower()
    for lang in LANGUAGES:
        if language.startswith(lang):
            return lang
    raise ValueError(f"unsupported ASR language {language!r}: use 'en', 'zh' or 'auto'")
