"""Speaker encoder ``resemblyzer``: the GE2E LSTM of the Resemblyzer package
(3 LSTM layers of 256, a 256-d ReLU projection), run in numpy.

Weights: ``resemblyzer/pretrained.pt`` from the Resemblyzer 0.1.4 wheel, a
legacy torch checkpoint read without torch (models/speaker/torch_legacy.py) and
converted once to ``resemblyzer.npz`` (only the 1.4 M inference floats; the
file also carries the optimizer's state). Front end: 40-band power mel (not
log), 25 ms Hann windows every 10 ms; the clip is cut into 1.6 s partials
every ~0.77 s, each embedded and L2-normalised, and their mean normalised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np

from models.speaker import SpeakerEncoder, l2_normalize
from models.speaker.features import power_mel

PT_FILE = "resemblyzer_pretrained.pt"
NPZ_FILE = "resemblyzer.npz"
HOP = 160
PARTIAL_FRAMES = 160  # 1.6 s
PARTIAL_RATE = 1.3  # partials per second
MIN_COVERAGE = 0.75  # the last partial is kept only if the clip fills this much of it
TARGET_DBFS = -30.0


def convert(pt_path: Path, npz_path: Path) -> None:
    """The inference weights of the checkpoint as a plain .npz (written atomically)."""
    from models.speaker.torch_legacy import load_legacy

    state = load_legacy(pt_path)["model_state"]
    arrays = {k.replace(".", "_"): np.asarray(v, np.float32) for k, v in state.items()}
    arrays = {k: v for k, v in arrays.items() if k.startswith(("lstm_", "linear_"))}
    tmp = npz_path.with_name(npz_path.name + ".partial.npz")
    np.savez(tmp, **cast(dict[str, Any], arrays))  # numpy's stub types **kwds too narrowly
    tmp.replace(npz_path)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # no overflow warnings for large |x|


class ResemblyzerEncoder(SpeakerEncoder):
    name = "resemblyzer"

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.layers = [
            (
                weights[f"lstm_weight_ih_l{n}"].T.copy(),
                weights[f"lstm_weight_hh_l{n}"].T.copy(),
                weights[f"lstm_bias_ih_l{n}"] + weights[f"lstm_bias_hh_l{n}"],
            )
            for n in range(3)
        ]
        self.proj_w = weights["linear_weight"].T.copy()
        self.proj_b = weights["linear_bias"]

    @classmethod
    def load(cls, folder: Path) -> ResemblyzerEncoder:
        npz = folder / NPZ_FILE
        if not npz.is_file():
            pt = folder / PT_FILE
            if not pt.is_file():
                raise RuntimeError(f"{pt} is missing: run `videochat weights`")
            convert(pt, npz)
        with np.load(npz) as z:
            return cls({k: z[k] for k in z.files})

    def _forward(self, mels: np.ndarray) -> np.ndarray:
        """(batch, frames, 40) -> (batch, 256) L2-normalised."""
        x = mels
        h = np.zeros((mels.shape[0], 256), np.float32)
        for w_ih, w_hh, bias in self.layers:
            xs = x @ w_ih + bias  # the input part of all steps at once
            hidden = w_hh.shape[0]
            h = np.zeros((x.shape[0], hidden), np.float32)
            c = np.zeros_like(h)
            out = np.empty((x.shape[0], x.shape[1], hidden), np.float32)
            for t in range(x.shape[1]):
                g = xs[:, t] + h @ w_hh  # gates in torch's order: i, f, g, o
                i = _sigmoid(g[:, :hidden])
                f = _sigmoid(g[:, hidden : 2 * hidden])
                c = f * c + i * np.tanh(g[:, 2 * hidden : 3 * hidden])
                h = _sigmoid(g[:, 3 * hidden :]) * np.tanh(c)
                out[:, t] = h
            x = out
        return l2_normalize(np.maximum(h @ self.proj_w + self.proj_b, 0.0))

    @staticmethod
    def partials(n_samples: int) -> list[tuple[int, int]]:
        """(start, end) frame ranges of the partials for a clip of ``n_samples``."""
        n_frames = int(np.ceil((n_samples + 1) / HOP))
        step = max(1, int(round(16_000 / PARTIAL_RATE / HOP)))
        last = max(1, n_frames - PARTIAL_FRAMES + step + 1)
        slices = [(s, s + PARTIAL_FRAMES) for s in range(0, last, step)]
        coverage = (n_samples - slices[-1][0] * HOP) / (PARTIAL_FRAMES * HOP)
        if coverage < MIN_COVERAGE and len(slices) > 1:
            slices.pop()
        return slices

    def embed(self, audio_16k: np.ndarray) -> np.ndarray:
        wav = np.asarray(audio_16k, np.float32).reshape(-1)
        # What it was trained on: volume raised (never lowered) to -30 dBFS.
        rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if wav.size else 0.0
        if rms > 0:
            gain_db = TARGET_DBFS - 20 * np.log10(rms)
            if gain_db > 0:
                wav = wav * np.float32(10 ** (gain_db / 20))
        slices = self.partials(wav.size)
        wav = np.pad(wav, (0, max(0, slices[-1][1] * HOP - wav.size)))
        mel = power_mel(
            wav, n_fft=400, hop=HOP, win_length=400, window="hann", n_mels=40, center=True
        )
        batch = np.stack([mel[a:b] for a, b in slices])
        return l2_normalize(self._forward(batch).mean(axis=0))
