"""GLM-4-Voice's audio ends: the speech tokenizer (user audio -> 12.5 Hz
tokens) and the speech decoder (audio tokens -> 22.05 kHz speech).

Both run upstream's own modules from a GLM-4-Voice checkout (THUDM/GLM-4-Voice
at eb00ce9, on ``PYTHONPATH``): ``speech_tokenizer.modeling_whisper.
WhisperVQEncoder`` (a Whisper encoder with a vector quantiser after its
pooling: 100 Hz mel -> conv stride 2 -> pooling 4 -> 12.5 Hz) and
``flow_inference.AudioDecoder`` (CosyVoice's flow matching to mel, then the
HiFT vocoder). The steps around them are upstream's, written here so they run
on any device: ``speech_tokenizer/utils.py`` ``extract_speech_token``
hard-codes ``.cuda()``, and ``web_demo.py`` keeps a reply's decoder state in
local variables. Blocking calls: run them in a worker thread.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np

from models.s2s.glm4voice_tokens import AudioBlock

SPEECH_SAMPLE_RATE = 22_050  # what the HiFT vocoder makes
INPUT_SAMPLE_RATE = 16_000  # what the speech tokenizer takes
SEGMENT_S = 30  # the tokenizer's Whisper window: longer audio is cut in 30 s pieces


class SpeechTokenizer:
    """User audio (16 kHz mono float32) -> speech token ids (0..16383)."""

    def __init__(self, model: Any, feature_extractor: Any, device: str) -> None:
        self.model = model
        self.feature_extractor = feature_extractor
        self.device = device

    @classmethod
    def load(cls, folder: Path, device: str) -> SpeechTokenizer:
        from speech_tokenizer.modeling_whisper import WhisperVQEncoder  # the checkout
        from transformers import WhisperFeatureExtractor

        model = WhisperVQEncoder.from_pretrained(str(folder), local_files_only=True)
        extractor = WhisperFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        return cls(model.eval().to(device), extractor, device)

    def tokens(self, audio: np.ndarray) -> list[int]:
        import torch

        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        window = SEGMENT_S * INPUT_SAMPLE_RATE
        segments = [audio[start : start + window] for start in range(0, audio.size, window)]
        if not segments:
            return []
        model = self.model
        frames_per_step = model.conv1.stride[0] * model.conv2.stride[0]
        pooling = model.config.pooling_kernel_size or 1
        hop = self.feature_extractor.hop_length
        features = self.feature_extractor(
            segments,
            sampling_rate=INPUT_SAMPLE_RATE,
            return_attention_mask=True,
            return_tensors="pt",
            padding="longest",
            pad_to_multiple_of=frames_per_step * pooling * hop,
        ).to(self.device)
        with torch.inference_mode():
            ids = model(**features).quantized_token_ids
        # Which token positions hold audio, not padding (upstream's mask steps).
        mask = features.attention_mask[:, ::frames_per_step][:, ::pooling]
        if mask.shape != ids.shape:
            raise RuntimeError(
                f"speech tokenizer: mask {tuple(mask.shape)} vs ids {tuple(ids.shape)}"
            )
        tokens: list[int] = []
        for row, keep in zip(ids, mask, strict=True):
            tokens.extend(int(t) for t in row[keep.bool()].tolist())
        return tokens


class SpeechDecoder:
    """Loads upstream's AudioDecoder (flow + HiFT) once; ``new_reply`` keeps
    one reply's state."""

    def __init__(self, audio_decoder: Any, device: str) -> None:
        self.audio_decoder = audio_decoder
        self.device = device

    @classmethod
    def load(cls, folder: Path, device: str) -> SpeechDecoder:
        from flow_inference import AudioDecoder  # the checkout

        decoder = AudioDecoder(
            config_path=str(folder / "config.yaml"),
            flow_ckpt_path=str(folder / "flow.pt"),
            hift_ckpt_path=str(folder / "hift.pt"),
            device=device,
        )
        return cls(decoder, device)

    def new_reply(self) -> ReplySpeech:
        return ReplySpeech(self.audio_decoder, self.device)


class ReplySpeech:
    """One reply's audio blocks, decoded in order as web_demo.py does: each
    block conditioned on all earlier tokens and their mel (``prompt_token``,
    ``prompt_feat``), the decoder's overlap and vocoder caches under this
    reply's uuid, the last block with ``finalize``."""

    def __init__(self, audio_decoder: Any, device: str) -> None:
        self._decoder = audio_decoder
        self._device = device
        self.uuid = str(uuid.uuid4())
        self._tokens: list[int] = []  # decoded so far: the next block's prompt
        self._mels: list[Any] = []
        self.finished = False

    def decode(self, block: AudioBlock) -> np.ndarray:
        """The block's speech, 22.05 kHz mono float32."""
        import torch

        if self.finished:
            raise RuntimeError("this reply's speech is finished")
        token = torch.tensor([list(block.tokens)], dtype=torch.int64, device=self._device)
        prompt_token = torch.tensor([self._tokens], dtype=torch.int64, device=self._device)
        prompt_token = prompt_token.reshape(1, len(self._tokens))
        if self._mels:
            prompt_feat = torch.cat(self._mels, dim=-1).transpose(1, 2)
        else:
            prompt_feat = torch.zeros(1, 0, 80, device=self._device)
        with torch.inference_mode():
            speech, mel = self._decoder.token2wav(
                token,
                uuid=self.uuid,
                prompt_token=prompt_token,
                prompt_feat=prompt_feat,
                finalize=block.final,
            )
        self._tokens.extend(block.tokens)
        self._mels.append(mel)
        if block.final:
            self.finished = True
        return np.ascontiguousarray(speech.detach().float().cpu().numpy().reshape(-1), np.float32)

    def abandon(self) -> None:
        """The reply stopped before its final block (barge-in): drop what the
        decoder keeps under this uuid (upstream frees it only on ``finalize``)."""
        if self.finished:
            return
        self.finished = True
        for cache in ("mel_overlap_dict", "hift_cache_dict"):
            getattr(self._decoder, cache, {}).pop(self.uuid, None)
