"""Does a clip hold more than one speaker? Windows of its speech are embedded
with a speaker encoder and split into the two most separate groups (spherical
2-means); two speakers show as two groups whose mean embeddings are far apart,
each holding a fair share of the speech.

Only clearly different voices separate this way (a man and a woman, measured
in docs/benchmarks.md "One speaker per clip"); two similar voices look like
one. The thresholds are set so that no single speaker measured was refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.speaker import SpeakerEncoder, l2_normalize

SAMPLE_RATE = 16_000
WINDOW_S = 1.5  # long enough for a stable embedding, short enough for a turn
HOP_S = 0.75
# Two groups are two speakers when their mean embeddings are less alike than
# this, and the smaller holds at least MIN_SHARE of the windows and
# MIN_SECOND_S seconds of speech (a cough or a word from someone else is no
# second speaker).
MAX_SIMILARITY = 0.5
MIN_SHARE = 0.2
MIN_SECOND_S = 2.0


@dataclass(frozen=True)
class SpeakerSplit:
    """The clip's speech windows split in two groups."""

    windows: int
    similarity: float  # cosine similarity of the groups' mean embeddings (1.0: no split)
    minor_share: float  # the smaller group's share of the windows
    minor_seconds: float  # about how much speech the smaller group holds

    @property
    def two_speakers(self) -> bool:
        return (
            self.similarity < MAX_SIMILARITY
            and self.minor_share >= MIN_SHARE
            and self.minor_seconds >= MIN_SECOND_S
        )


def voiced(audio: np.ndarray, speech: np.ndarray, frame: int) -> np.ndarray:
    """The frames of ``audio`` marked as speech in ``speech`` (one flag per
    ``frame`` samples), joined: pauses and noise between turns left out."""
    flags = np.asarray(speech, bool)[: audio.size // frame]
    frames = audio[: flags.size * frame].reshape(flags.size, frame)
    return np.ascontiguousarray(frames[flags].reshape(-1), dtype=np.float32)


def window_embeddings(
    encoder: SpeakerEncoder, audio: np.ndarray, window_s: float = WINDOW_S, hop_s: float = HOP_S
) -> np.ndarray:
    """(n, dim) embeddings of overlapping windows of ``audio`` (16 kHz)."""
    window = int(window_s * SAMPLE_RATE)
    hop = int(hop_s * SAMPLE_RATE)
    if audio.size < window:
        return encoder.embed(audio)[None, :] if audio.size else np.zeros((0, 0), np.float32)
    starts = range(0, audio.size - window + 1, hop)
    return np.stack([encoder.embed(audio[s : s + window]) for s in starts])


def two_means(embeddings: np.ndarray, rounds: int = 20) -> np.ndarray:
    """Labels (0/1) of the split of ``embeddings`` into two groups with the
    least spread (spherical k-means; each window is tried as a seed with the
    one least like it, so the result is deterministic; n is at most ~40)."""
    x = l2_normalize(embeddings)
    sims = x @ x.T
    best: tuple[float, np.ndarray] | None = None
    for seed in range(len(x)):
        centres = x[[seed, int(np.argmin(sims[seed]))]]
        labels = np.argmax(x @ centres.T, axis=1)
        for _ in range(rounds):
            if labels.min() == labels.max():
                break
            centres = l2_normalize(np.stack([x[labels == k].mean(axis=0) for k in (0, 1)]))
            new = np.argmax(x @ centres.T, axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
        if labels.min() == labels.max():
            continue
        spread = float(np.sum(1.0 - np.sum(x * centres[labels], axis=1)))
        if best is None or spread < best[0]:
            best = (spread, labels)
    return best[1] if best is not None else np.zeros(len(x), int)


def split_speakers(
    encoder: SpeakerEncoder, speech_audio: np.ndarray, hop_s: float = HOP_S
) -> SpeakerSplit:
    """Split the speech (pauses already removed: ``voiced``) in two groups."""
    emb = window_embeddings(encoder, speech_audio, hop_s=hop_s)
    n = len(emb)
    if n < 3:
        return SpeakerSplit(n, 1.0, 0.0, 0.0)
    labels = two_means(emb)
    counts = np.bincount(labels, minlength=2)
    if counts.min() == 0:
        return SpeakerSplit(n, 1.0, 0.0, 0.0)
    centres = l2_normalize(np.stack([emb[labels == k].mean(axis=0) for k in (0, 1)]))
    minor = int(counts.min())
    seconds = speech_audio.size / SAMPLE_RATE
    return SpeakerSplit(
        windows=n,
        similarity=round(float(centres[0] @ centres[1]), 4),
        minor_share=round(minor / n, 3),
        minor_seconds=round(seconds * minor / n, 2),
    )
