"""One exchange and its reply pieces: the turn's marks, what was played of
each piece, and the summaries the page, the API and the metrics read."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.events import Mark
from pipelines.planner import ReplyProgress
from pipelines.timebase import REAL_TIME


@dataclass
class ReplyPiece:
    text: str
    lang: str
    samples: int
    played: int = 0
    filler: bool = False  # "Let me see.": heard, but not the model's words
    opener: bool = False  # "Sure,": the model's words, said before the answer proper
    # False while more of its audio may come (a streamed piece): ``samples``
    # then counts what was pushed so far and ``expected_samples`` is a guess
    # at the whole, so a cut share of it is not taken for all of it.
    complete: bool = True
    expected_samples: int = 0

    @property
    def heard_in_full(self) -> bool:
        return self.complete and self.played >= self.samples

    @property
    def heard_share(self) -> float:
        """The share of the piece's words the user has heard."""
        whole = self.samples if self.complete else max(self.samples, self.expected_samples)
        return min(1.0, self.played / whole) if whole else 0.0


@dataclass
class Turn:
    """The timeline of one exchange; times are seconds on the session's time
    source (``now``)."""

    index: int
    source: str  # "voice" | "text" | "say"
    end_of_speech: float
    marks: dict[str, float] = field(default_factory=dict)
    user_text: str = ""
    pieces: list[ReplyPiece] = field(default_factory=list)
    generation_done: bool = False
    interrupted: bool = False
    latency_sent: bool = False
    heard_text: str = ""
    barge_in_after: float | None = None  # seconds of user speech before the barge-in
    # Playback: the longest run of frames without reply audio between the
    # first reply audio and the end, over the whole reply and once the answer
    # proper had started (the queue ran dry: what the planner prevents).
    longest_gap: float = 0.0
    longest_gap_in_answer: float = 0.0
    last_audio_frame: float | None = None
    # A speculative turn starts during the hang-over; it speaks only once confirmed.
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    speech_end_sample: int | None = None  # the VAD position its audio ends at
    # Set when the LLM's first token arrives; the opener waits for it (bounded).
    first_token: asyncio.Event = field(default_factory=asyncio.Event)
    synthesizing: int = 0  # TTS calls of this turn running
    # The answer may start: enough of it is synthesized (pipelines/planner.py).
    reply_ready: asyncio.Event = field(default_factory=asyncio.Event)
    progress: ReplyProgress = field(default_factory=lambda: ReplyProgress("en"))
    llm_error: BaseException | None = None  # why the LLM gave no (full) answer
    now: Callable[[], float] = field(default=REAL_TIME.now, repr=False, compare=False)

    @property
    def speculative(self) -> bool:
        """Started at a pause in the user's speech, not yet confirmed."""
        return not self.confirmed.is_set()

    def mark(self, name: Mark) -> None:
        self.marks.setdefault(name, self.now())

    def hand_to_tts(self, piece: str, pieces: asyncio.Queue[str | None]) -> None:
        """A piece of the reply is written: count it and queue it for synthesis."""
        self.mark(Mark.FIRST_CLAUSE)
        self.progress.written_chars += len(piece)
        self.progress.pending_pieces += 1
        pieces.put_nowait(piece)

    def latency(self) -> dict[str, float]:
        times = {str(name): round(t - self.end_of_speech, 4) for name, t in self.marks.items()}
        if self.barge_in_after is not None:
            times["barge_in_detected_after"] = round(self.barge_in_after, 4)
        return times

    def playback(self) -> dict[str, float]:
        return {
            "longest_gap": round(self.longest_gap, 3),
            "longest_gap_in_answer": round(self.longest_gap_in_answer, 3),
        }

    def heard(self, fillers: bool = True) -> str:
        """The part of the reply that was actually played to the user (without
        fillers: the part the model wrote, for the chat history)."""
        parts: list[str] = []
        pieces = [p for p in self.pieces if fillers or not p.filler]
        for piece in pieces:
            if piece.heard_in_full:
                parts.append(piece.text)
            elif piece.played > 0:
                parts.append(_prefix(piece.text, piece.heard_share))
                break
            else:
                break
        joiner = "" if parts and all(p.lang == "zh" for p in pieces[: len(parts)]) else " "
        return joiner.join(p for p in parts if p).strip()

    def summary(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "source": self.source,
            "user_text": self.user_text,
            "bot_text": self.heard_text,  # what the user heard
            "reply_text": " ".join(p.text for p in self.pieces),  # what was synthesized
            "interrupted": self.interrupted,
            "latency": self.latency(),
            "playback": self.playback(),
        }


def _prefix(text: str, fraction: float) -> str:
    """The share ``fraction`` of ``text``'s words (characters for Chinese)."""
    if any("\u4e00" <= ch <= "\u9fff" for ch in text):
        return text[: int(len(text) * fraction)]
    words = text.split()
    return " ".join(words[: int(len(words) * fraction)])
