"""Cut a streaming LLM reply into speakable pieces.

The first clause is flushed at the first punctuation mark (commas included),
or after a few words if no mark comes, so speech can start early (TTS cost
grows with the length of the piece); after that we wait for whole sentences,
which sound more natural and cost fewer TTS calls.
"""

from __future__ import annotations

import logging
import re

SENTENCE_END = "。！？!?；;…\n."
CLAUSE_END = SENTENCE_END + "，,、：:"
NEEDS_SPACE = ".,:"
_ABBREVIATION = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St|vs|etc|e\.g|i\.e)\.$")
# Markdown and symbols a TTS would read aloud or choke on.
_NOISE = re.compile(r"[*_`#>|~\[\]{}<>]+|^\s*[-•]\s+", re.MULTILINE)


def ends_sentence(piece: str) -> bool:
    """Whether a piece the splitter cut ends a sentence (not a clause, not a
    word where playback ran dry), closing quotes and brackets aside."""
    text = piece.rstrip().rstrip("\"'”’)）」』")
    return bool(text) and text[-1] in SENTENCE_END and not _ABBREVIATION.search(text)


class SentenceSplitter:
    def __init__(
        self,
        min_first_chars: int = 2,
        max_first_words: int = 4,
        max_first_cjk: int = 6,
        clause_min_words: int = 8,
        clause_min_cjk: int = 12,
    ) -> None:
        self._buffer = ""
        self._first = True
        self._min_first_chars = min_first_chars
        self._max_first_words = max_first_words  # 0: no cap
        self._max_first_cjk = max_first_cjk
        # Later pieces end at sentences, or at a clause mark once they are this
        # long: a long sentence would keep the listener waiting for its TTS.
        self._clause_min_words = clause_min_words
        self._clause_min_cjk = clause_min_cjk

    def push(self, delta: str) -> list[str]:
        """Add streamed text; return the pieces that are ready to speak."""
        self._buffer += delta
        pieces: list[str] = []
        while True:
            piece = self._cut()
            if piece is None:
                return pieces
            if piece:
                pieces.append(piece)

    @property
    def started(self) -> bool:
        """Whether the first piece has been cut."""
        return not self._first

    def cut_early(self, min_words: int = 3, min_cjk: int = 4) -> list[str]:
        """Playback is running dry: cut the text so far at its last complete word
        (Chinese: at a word boundary) if it holds at least ``min_words`` words
        (``min_cjk`` characters), rather than wait for a clause mark."""
        buffer = self._buffer
        cjk = sum("\u4e00" <= ch <= "\u9fff" for ch in buffer)
        if cjk:
            if cjk <= min_cjk:
                return []
            # The last word end with at least min_cjk characters before it.
            ends = [position for position, count in _cjk_word_ends(buffer) if count >= min_cjk]
            cut = ends[-1] if ends else None
        else:
            ends = _word_ends(buffer)
            cut = ends[-1] if len(ends) >= min_words else None
        if cut is None:
            return []
        piece = _clean(buffer[:cut])
        if not piece:
            return []
        self._buffer = buffer[cut:]
        self._first = False
        return [piece]

    def flush(self) -> list[str]:
        """End of the reply: whatever is left is one last piece."""
        rest = _clean(self._buffer)
        self._buffer = ""
        return [rest] if rest else []

    def _cut(self) -> str | None:
        buffer = self._buffer
        for index, char in enumerate(buffer):
            if char not in CLAUSE_END:
                continue
            if char not in SENTENCE_END and not self._first and not self._long(buffer[:index]):
                continue
            if char in NEEDS_SPACE:
                # ASCII '.', ',' and ':' end a piece only before whitespace: not in
                # "3.5", "1,000" or "10:30"; wait for the next character to know.
                if index + 1 >= len(buffer):
                    return None
                if not buffer[index + 1].isspace():
                    continue
                if char == "." and _ABBREVIATION.search(buffer[: index + 1]):
                    continue
            piece = _clean(buffer[: index + 1])
            if self._first and len(piece) < self._min_first_chars:
                continue
            self._buffer = buffer[index + 1 :]
            self._first = False
            return piece
        if self._first:
            return self._cap_first_piece()
        return None

    def _long(self, text: str) -> bool:
        cjk = sum("\u4e00" <= ch <= "\u9fff" for ch in text)
        if cjk:
            return cjk >= self._clause_min_cjk
        return len(text.split()) >= self._clause_min_words

    def _cap_first_piece(self) -> str | None:
        """No mark yet in the first piece: cut it after a few words anyway."""
        buffer = self._buffer
        cjk = [i for i, ch in enumerate(buffer) if "\u4e00" <= ch <= "\u9fff"]
        if self._max_first_cjk and len(cjk) > self._max_first_cjk:
            cut = _cjk_word_cut(buffer, self._max_first_cjk)
            if cut is None:
                return None
        elif self._max_first_words:
            ends = _word_ends(buffer)
            if len(ends) < self._max_first_words or cjk:
                return None
            cut = ends[self._max_first_words - 1]
        else:
            return None
        piece = _clean(buffer[:cut])
        self._buffer = buffer[cut:]
        self._first = False
        return piece


def warm_up() -> None:
    """Load jieba's dictionary now (about 0.5 s) rather than in the first turn."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()


def _word_ends(text: str) -> list[int]:
    """Where each complete word of ``text`` ends (a word followed by white
    space: the last one may still be streaming)."""
    return [m.end() for m in re.finditer(r"\S(?=\s)", text)]


def _cjk_word_ends(text: str) -> list[tuple[int, int]]:
    """(position, Chinese characters before it) after each word of ``text`` but
    the last, which may still be streaming (jieba, which misaki's Chinese G2P
    already depends on): the places a piece can end without splitting a word."""
    import jieba

    ends = []
    position = count = 0
    for word in jieba.lcut(text)[:-1]:
        position += len(word)
        count += sum("\u4e00" <= ch <= "\u9fff" for ch in word)
        ends.append((position, count))
    return ends


def _cjk_word_cut(text: str, limit: int) -> int | None:
    """The first word end with at least ``limit`` Chinese characters before it."""
    return next((position for position, count in _cjk_word_ends(text) if count >= limit), None)


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", _NOISE.sub("", text)).strip()
