"""GLM-4-Voice's output, routed: text tokens become text, audio tokens go to
the speech decoder in blocks.

The 9B model answers in one stream of token ids, 13 text tokens then 26 audio
tokens, alternately; an audio token is the special token ``<|audio_N|>`` (N in
0..16383, ids ``audio_offset + N``). The reply ends at ``<|user|>`` (the model
hands the turn back) or an end-of-text id. Upstream's web demo
(THUDM/GLM-4-Voice ``web_demo.py`` at eb00ce9) decodes audio in blocks of 25,
then 50, 100, 150 and 200 tokens: the first block is small so speech starts
early (25 tokens at 12.5 Hz are 2 s of speech), later ones are larger because
the flow decoder is more efficient on longer blocks. The last block is
whatever is left when the reply ends, decoded with ``finalize``.

Pure Python, no torch: the backend feeds ids in, the tests feed synthetic
streams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

# Upstream's block sizes, in audio tokens (web_demo.py: block_size_list).
BLOCK_SIZES: tuple[int, ...] = (25, 50, 100, 150, 200)
AUDIO_CODEBOOK = 16_384  # <|audio_0|> .. <|audio_16383|>
REPLACEMENT = "\ufffd"  # what a byte-level decode shows for an incomplete UTF-8 sequence

Decode = Callable[[Sequence[int]], str]


@dataclass(frozen=True)
class TextPiece:
    """New reply text, whole characters only."""

    text: str


@dataclass(frozen=True)
class AudioBlock:
    """Audio tokens (codebook indices, not vocabulary ids) for the decoder;
    ``final``: the reply's last block (decode with ``finalize``)."""

    tokens: tuple[int, ...]
    final: bool = False


Routed = TextPiece | AudioBlock


class IncrementalDetokenizer:
    """Text from token ids as they come, never half a character: a byte-level
    tokenizer may split a multi-byte UTF-8 character (a Chinese character is
    three bytes) across tokens, and decoding the first part alone gives U+FFFD.
    Each step decodes from the previous boundary (for the context a tokenizer
    needs to place spaces) and hands out only what is new and whole."""

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # decoding starts here (context for the next piece)
        self._read = 0  # text up to here is handed out

    def push(self, token_id: int) -> str:
        """The new text once ``token_id`` is added ("" while a character is incomplete)."""
        self._ids.append(token_id)
        said = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(said) or text.endswith(REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(said) :]

    def flush(self) -> str:
        """What is left at the end (an incomplete character stays as U+FFFD)."""
        said = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(said) :]

    @property
    def ids(self) -> list[int]:
        return list(self._ids)


@dataclass
class TokenRouter:
    """One reply's token ids in, ``Routed`` items out, in order."""

    decode: Decode
    audio_offset: int  # the id of <|audio_0|>
    end_ids: frozenset[int]  # <|user|> and the end-of-text ids
    audio_tokens: int = AUDIO_CODEBOOK
    block_sizes: Sequence[int] = BLOCK_SIZES
    ended: bool = field(default=False, init=False)
    # Every id of the reply up to (not including) the end token: what the
    # conversation's history keeps (upstream keeps the same).
    reply_ids: list[int] = field(default_factory=list, init=False)
    _text: IncrementalDetokenizer = field(init=False)
    _pending_audio: list[int] = field(default_factory=list, init=False)
    _blocks_sent: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not self.block_sizes or min(self.block_sizes) < 1:
            raise ValueError("block sizes must be positive")
        self._text = IncrementalDetokenizer(self.decode)

    def is_audio(self, token_id: int) -> bool:
        return self.audio_offset <= token_id < self.audio_offset + self.audio_tokens

    @property
    def next_block_size(self) -> int:
        return self.block_sizes[min(self._blocks_sent, len(self.block_sizes) - 1)]

    @property
    def pending_audio(self) -> int:
        """Audio tokens received and not yet handed to the decoder."""
        return len(self._pending_audio)

    def feed(self, token_id: int) -> list[Routed]:
        """Route one generated id; nothing more is taken after the end."""
        if self.ended:
            return []
        if token_id in self.end_ids:
            return self.finish()
        self.reply_ids.append(token_id)
        if self.is_audio(token_id):
            self._pending_audio.append(token_id - self.audio_offset)
            if len(self._pending_audio) >= self.next_block_size:
                return [self._block(final=False)]
            return []
        text = self._text.push(token_id)
        return [TextPiece(text)] if text else []

    def feed_all(self, token_ids: Iterable[int]) -> list[Routed]:
        out: list[Routed] = []
        for token_id in token_ids:
            out.extend(self.feed(token_id))
        return out

    def finish(self) -> list[Routed]:
        """The reply ended (its end token, or generation stopped): the rest of
        the text, and the last audio block, final, if any audio is left."""
        if self.ended:
            return []
        self.ended = True
        out: list[Routed] = []
        rest = self._text.flush()
        if rest:
            out.append(TextPiece(rest))
        if self._pending_audio:
            out.append(self._block(final=True))
        return out

    def drop_pending(self) -> int:
        """Cancel: forget the audio not yet decoded (nobody will hear it);
        returns how many tokens were dropped."""
        dropped = len(self._pending_audio)
        self._pending_audio = []
        self.ended = True
        return dropped

    def text_ids(self) -> list[int]:
        return self._text.ids

    def _block(self, final: bool) -> AudioBlock:
        block = AudioBlock(tuple(self._pending_audio), final=final)
        self._pending_audio = []
        self._blocks_sent += 1
        return block


def ids_through_heard(
    reply_ids: Sequence[int], is_audio: Callable[[int], bool], decode: Decode, heard: str
) -> list[int]:
    """The reply's ids up to the last text token the user heard: ``heard`` is
    the reply text as played (spacing may differ, pieces are joined with
    spaces), so characters are matched ignoring white space. Audio tokens in
    between stay (they are the speech that was played); none after it."""
    wanted = sum(1 for ch in heard if not ch.isspace())
    if wanted == 0:
        return []
    text_ids: list[int] = []
    for index, token_id in enumerate(reply_ids):
        if is_audio(token_id):
            continue
        text_ids.append(token_id)
        got = sum(1 for ch in decode(text_ids) if not ch.isspace() and ch != REPLACEMENT)
        if got >= wanted:
            return list(reply_ids[: index + 1])
    return list(reply_ids)
