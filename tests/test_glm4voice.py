"""GLM-4-Voice as the end-to-end stage (models/s2s/glm4voice*.py), on the CPU.

What is real here and what is not:

- the token router, the incremental detokenizer and the history cut after a
  barge-in: pure Python on synthetic token streams;
- our model server: its HTTP protocol, cancel, hang-up and deadlines, with a
  loopback fake generator that counts the tokens it makes;
- the language model: transformers' ``GlmForCausalLM`` (GLM-4-9B's
  architecture, which GLM-4-Voice-9B is) with tiny random weights, saved in
  the ChatGLM checkpoint format the published model uses and loaded through
  our key mapping, generating through our server;
- the text tokenizer: a tiny byte-level BPE with GLM-4-Voice's special tokens
  (``<|user|>``, ``<|audio_N|>``, ...), loaded by ``AutoTokenizer``;
- the speech tokenizer and the flow decoder + vocoder are FAKES with
  upstream's signatures (``speech_tokenizer.modeling_whisper.WhisperVQEncoder``
  and ``flow_inference.AudioDecoder`` at THUDM/GLM-4-Voice eb00ce9): their code
  lives in upstream's repository, not on a registry, so tiny real ones are out
  of reach here. transformers' real ``WhisperFeatureExtractor`` feeds the fake
  encoder.

torch and transformers are an optional extra: without them the router and
server tests still run, the rest is skipped.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from core.config import S2SConfig
from models.base import BackendUnavailable, Speech, TextDelta
from models.s2s.glm4voice_client import GenerationClient, ModelServerError
from models.s2s.glm4voice_server import (
    Finished,
    GenerationRequest,
    GenerationServer,
    serve_in_thread,
)
from models.s2s.glm4voice_tokens import (
    BLOCK_SIZES,
    AudioBlock,
    IncrementalDetokenizer,
    TextPiece,
    TokenRouter,
    ids_through_heard,
)
from tests.upstream_fakes import fake_modules

# ------------------------------------------------------------ token router
# A synthetic vocabulary: ids 0-9 special, 10-265 one byte each, 1000+ audio.
USER, EOS = 1, 2
AUDIO0 = 1000
BYTE0 = 10


def byte_ids(text: str) -> list[int]:
    return [BYTE0 + b for b in text.encode()]


def decode_bytes(ids: list[int] | tuple[int, ...]) -> str:
    data = bytes(i - BYTE0 for i in ids if BYTE0 <= i < BYTE0 + 256)
    return data.decode("utf-8", errors="replace")


def router(**kwargs: Any) -> TokenRouter:
    return TokenRouter(
        decode=decode_bytes,
        audio_offset=AUDIO0,
        end_ids=frozenset({USER, EOS}),
        audio_tokens=100,
        **kwargs,
    )


def interleaved(text: str, audio: int, text_run: int = 13, audio_run: int = 26) -> list[int]:
    """GLM-4-Voice's pattern: 13 text tokens, 26 audio tokens, alternately."""
    texts, out = byte_ids(text), []
    audio_ids = [AUDIO0 + i % 100 for i in range(audio)]
    while texts or audio_ids:
        out += texts[:text_run] + audio_ids[:audio_run]
        texts, audio_ids = texts[text_run:], audio_ids[audio_run:]
    return out


def text_of(items: list[Any]) -> str:
    return "".join(i.text for i in items if isinstance(i, TextPiece))


def blocks_of(items: list[Any]) -> list[AudioBlock]:
    return [i for i in items if isinstance(i, AudioBlock)]


def test_an_interleaved_reply_routes_text_and_audio_blocks_growing_from_a_small_first() -> None:
    reply = "Paris is the capital of France, and it is lovely in spring. " * 2
    tokens = interleaved(reply, 200)
    r = router()
    items = r.feed_all([*tokens, USER, *byte_ids("ignored after the end")])
    assert r.ended and text_of(items) == reply
    blocks = blocks_of(items)
    # Upstream's schedule: 25, then 50, then 100, and what is left, final.
    assert [len(b.tokens) for b in blocks] == [25, 50, 100, 25]
    assert [b.final for b in blocks] == [False, False, False, True]
    assert [t for b in blocks for t in b.tokens] == [i % 100 for i in range(200)]
    # The first audio block leaves once 25 audio tokens have come: within the
    # first audio run, long before the reply ends.
    first = next(n for n, item in enumerate(items) if isinstance(item, AudioBlock))
    assert len(text_of(items[:first])) == 13
    assert r.reply_ids == tokens  # the end token is not part of the reply


def test_the_last_partial_block_is_final_and_text_after_the_audio_is_kept() -> None:
    r = router()
    items = r.feed_all([*interleaved("Hi.", 30), *byte_ids(" Bye."), EOS])
    assert [(len(b.tokens), b.final) for b in blocks_of(items)] == [(25, False), (5, True)]
    assert text_of(items) == "Hi. Bye."
    r2 = router()
    assert blocks_of(r2.feed_all(interleaved("Hi.", 25))) == [AudioBlock(tuple(range(25)))]
    assert r2.finish() == []  # nothing left: no empty final block
    assert r2.feed(AUDIO0) == []  # finished: nothing more is taken


def test_text_never_splits_a_character_across_pieces() -> None:
    text = "你好，Paris 是法国的首都。"
    r = router()
    items = r.feed_all([*byte_ids(text), EOS])
    pieces = [i.text for i in items if isinstance(i, TextPiece)]
    assert "".join(pieces) == text and len(pieces) > 5
    assert all("\ufffd" not in p for p in pieces)
    # A character cut by the end of the reply shows as U+FFFD, once.
    cut = IncrementalDetokenizer(decode_bytes)
    assert [cut.push(i) for i in byte_ids("好")[:2]] == ["", ""]
    assert cut.flush() == "\ufffd"


def test_the_detokenizer_keeps_the_context_a_tokenizer_needs_for_spaces() -> None:
    # A SentencePiece-like decode drops a leading space: pieces decoded alone
    # would lose the spaces between words.
    words = {1: "Hello", 2: " there", 3: " friend"}

    def decode(ids: list[int]) -> str:
        return "".join(words[i] for i in ids).lstrip()

    detok = IncrementalDetokenizer(decode)
    assert "".join(detok.push(i) for i in (1, 2, 3)) == "Hello there friend"


def test_cancel_mid_block_drops_the_undecoded_audio() -> None:
    r = router()
    items = r.feed_all(interleaved("Hello there, this is long.", 40))
    assert [len(b.tokens) for b in blocks_of(items)] == [25]
    assert r.pending_audio == 15
    assert r.drop_pending() == 15
    assert r.ended and r.feed(AUDIO0) == [] and r.finish() == []


def test_after_a_barge_in_the_history_keeps_the_reply_through_what_was_heard() -> None:
    reply = interleaved("Paris is the capital. It is lovely.", 60)

    def is_audio(token_id: int) -> bool:
        return token_id >= AUDIO0

    kept = ids_through_heard(reply, is_audio, decode_bytes, "Paris is  the\ncapital.")
    assert decode_bytes(kept) == "Paris is the capital."
    assert sum(1 for t in kept if is_audio(t)) == 26  # the audio that came between
    assert ids_through_heard(reply, is_audio, decode_bytes, "") == []
    assert (
        ids_through_heard(reply, is_audio, decode_bytes, "Paris is the capital. It is lovely. And")
        == reply
    )


# ------------------------------------------------------------- model server
class LoopbackGenerator:
    """A model that makes token 7 every ``every`` seconds, forever or up to
    ``max_new_tokens``, checking the stop flag between tokens as ours does;
    ``fail``: it raises after some tokens."""

    def __init__(self, every: float = 0.002, fail_after: int | None = None) -> None:
        self.every = every
        self.fail_after = fail_after
        self.running = threading.Event()
        self.returned = threading.Event()

    def generate(
        self,
        request: GenerationRequest,
        should_stop: Callable[[], bool],
        emit: Callable[[int], None],
    ) -> str:
        self.running.set()
        try:
            for n in range(request.max_new_tokens):
                if should_stop():
                    return "stopped"
                if self.fail_after is not None and n == self.fail_after:
                    raise RuntimeError("CUDA out of memory")
                emit(7)
                time.sleep(self.every)
            return "length"
        finally:
            self.returned.set()


@pytest.fixture
def loopback() -> Iterator[tuple[GenerationServer, LoopbackGenerator, str]]:
    generator = LoopbackGenerator()
    server = GenerationServer(generator)
    with serve_in_thread(server) as url:
        yield server, generator, url


def request(request_id: str, **kwargs: Any) -> dict[str, Any]:
    return {"request_id": request_id, "input_ids": [1, 2, 3], "max_new_tokens": 8192, **kwargs}


async def wait_for(predicate: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.01)


async def test_cancel_stops_the_generation_on_the_server(loopback) -> None:
    server, generator, url = loopback
    client = GenerationClient(url, timeout_s=60)
    got: list[int] = []
    try:
        async for token in client.generate(request("a")):
            got.append(token)
            if len(got) == 20:
                assert await client.cancel("a")
        await wait_for(lambda: "a" in server.finished)
        finished = server.finished["a"]
        assert finished.reason == "cancelled"
        # The model made at most the token in flight after it was told to stop.
        assert finished.after_cancel is not None and finished.after_cancel <= 1
        assert finished.produced == len(got) and finished.produced < 100
        assert not server.jobs and not await client.cancel("a")  # not running any more
    finally:
        await client.aclose()


async def test_a_client_that_hangs_up_stops_the_generation(loopback) -> None:
    server, generator, url = loopback
    client = GenerationClient(url, timeout_s=60)
    try:
        tokens = client.generate(request("b"))
        for _ in range(10):
            await anext(tokens)
        await tokens.aclose()  # the session went away mid-reply
        await wait_for(lambda: "b" in server.finished)
        assert generator.returned.is_set() and not server.jobs
        finished = server.finished["b"]
        assert finished.reason == "cancelled" and finished.produced < 8192
        assert finished.after_cancel is not None and finished.after_cancel <= 1
    finally:
        await client.aclose()


async def test_a_generation_past_its_deadline_is_stopped_and_reported(loopback) -> None:
    server, generator, url = loopback
    client = GenerationClient(url, timeout_s=0.3)
    try:
        with pytest.raises(TimeoutError, match="stopped the reply after"):
            async for _ in client.generate(request("c")):
                pass
        await wait_for(lambda: "c" in server.finished)
        assert server.finished["c"].reason == "timeout" and not server.jobs
        assert generator.returned.is_set()
    finally:
        await client.aclose()


async def test_requests_wait_for_the_one_model_and_the_wait_counts_to_the_deadline(
    loopback,
) -> None:
    server, generator, url = loopback
    client = GenerationClient(url, timeout_s=60)
    waiting = GenerationClient(url, timeout_s=0.3)
    try:
        first = client.generate(request("long"))
        await anext(first)  # the model is busy with "long"
        with pytest.raises(TimeoutError):
            async for _ in waiting.generate(request("queued")):
                pass
        await wait_for(lambda: "queued" in server.finished)
        assert server.finished["queued"] == Finished("timeout", 0, None)
        await first.aclose()
    finally:
        await client.aclose()
        await waiting.aclose()


async def test_a_model_failure_is_reported_through_the_protocol() -> None:
    server = GenerationServer(LoopbackGenerator(fail_after=3))
    with serve_in_thread(server) as url:
        client = GenerationClient(url, timeout_s=60)
        got: list[int] = []
        with pytest.raises(ModelServerError, match="CUDA out of memory"):
            async for token in client.generate(request("d")):
                got.append(token)
        await wait_for(lambda: "d" in server.finished)
        assert got == [7, 7, 7] and server.finished["d"].reason == "error"
        await client.aclose()


def test_the_server_refuses_a_malformed_request(loopback) -> None:
    import httpx

    _server, _generator, url = loopback
    bad = httpx.post(f"{url}/generate", json={"request_id": "e", "input_ids": []}, trust_env=False)
    assert bad.status_code == 422
    assert httpx.get(f"{url}/health", trust_env=False).json() == {"ok": True, "running": 0}


# ------------------------------------------------- tiny models (torch extra)
SPECIALS = [
    "<|endoftext|>",
    "[gMASK]",
    "<sop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_audio|>",
    "<|end_of_audio|>",
]
AUDIO_TOKENS = 256  # GLM-4-Voice has 16384
SAMPLES_PER_TOKEN = 1764  # 22050 Hz / 12.5 Hz
CORPUS = [
    "Paris is the capital of France. It is a lovely city on the Seine.",
    "What is the capital of France? Tell me more about Paris, please.",
    "你好，今天天气很好。巴黎是法国的首都。",
    "streaming_transcription\n",
]


def torch_extra() -> Any:
    return pytest.importorskip("torch"), pytest.importorskip("transformers")


def make_tokenizer(folder: Path) -> Any:
    """A byte-level BPE (GLM-4's tokenizer is byte-level too) with GLM-4-Voice's
    special tokens, ``[gMASK]<sop>`` prefixed like GLM-4's, saved and loaded
    as a model folder's tokenizer is."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=330,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIALS,
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer)
    bpe.add_special_tokens([f"<|audio_{i}|>" for i in range(AUDIO_TOKENS)])
    ids = {token: bpe.token_to_id(token) for token in ("[gMASK]", "<sop>")}
    bpe.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A", special_tokens=list(ids.items())
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def chatglm_state_dict(glm: dict[str, Any], layers: int) -> dict[str, Any]:
    """GlmForCausalLM tensors under the published checkpoint's names (THUDM's
    modeling_chatglm.py: transformer.embedding.word_embeddings,
    transformer.encoder.layers.N.self_attention.query_key_value (q, k, v
    fused), .dense, .mlp.dense_h_to_4h / dense_4h_to_h, final_layernorm,
    output_layer, rotary_pos_emb.inv_freq)."""
    import torch

    out = {
        "transformer.embedding.word_embeddings.weight": glm["model.embed_tokens.weight"],
        "transformer.encoder.final_layernorm.weight": glm["model.norm.weight"],
        "transformer.output_layer.weight": glm["lm_head.weight"],
        "transformer.rotary_pos_emb.inv_freq": torch.ones(4),
    }
    for n in range(layers):
        ours, theirs = f"model.layers.{n}.", f"transformer.encoder.layers.{n}."
        attn = ours + "self_attn."
        for kind in ("weight", "bias"):
            out[f"{theirs}self_attention.query_key_value.{kind}"] = torch.cat(
                [glm[f"{attn}{p}_proj.{kind}"] for p in "qkv"]
            )
        out[f"{theirs}self_attention.dense.weight"] = glm[attn + "o_proj.weight"]
        out[f"{theirs}mlp.dense_h_to_4h.weight"] = glm[ours + "mlp.gate_up_proj.weight"]
        out[f"{theirs}mlp.dense_4h_to_h.weight"] = glm[ours + "mlp.down_proj.weight"]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{theirs}{norm}.weight"] = glm[f"{ours}{norm}.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def chatglm_config(vocab: int, end_ids: list[int], pad: int) -> dict[str, Any]:
    """A ChatGLM config.json with the fields GLM-4-9B's has, tiny widths."""
    return {
        "architectures": ["ChatGLMModel"],
        "model_type": "chatglm",
        "auto_map": {"AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
        "num_layers": 2,
        "padded_vocab_size": vocab,
        "hidden_size": 32,
        "ffn_hidden_size": 64,
        "kv_channels": 8,
        "num_attention_heads": 4,
        "multi_query_attention": True,
        "multi_query_group_num": 2,
        "seq_length": 4096,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "layernorm_epsilon": 1.5625e-07,
        "rmsnorm": True,
        "apply_residual_connection_post_layernorm": False,
        "post_layer_norm": True,
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "bias_dropout_fusion": True,
        "apply_query_key_layer_scaling": True,
        "attention_softmax_in_fp32": True,
        "fp32_residual_connection": False,
        "rope_ratio": 1,
        "original_rope": True,
        "eos_token_id": end_ids,
        "pad_token_id": pad,
        "torch_dtype": "float32",
    }


def make_language_model(folder: Path, tokenizer: Any) -> Any:
    """A tiny random GlmForCausalLM saved as a ChatGLM checkpoint. Random
    weights, with one structural nudge so replies run long enough to test:
    coordinate 0 of the residual stream is a constant (embeddings set it, no
    layer writes it), and the output rows of the end ids, the other special
    tokens and the text tokens that are not whole characters read it
    negatively. The rest stays random: near-uniform text and audio tokens."""
    import torch
    from safetensors.torch import save_file
    from transformers import GlmForCausalLM

    from models.s2s.glm4voice_checkpoint import glm_config

    vocab = len(tokenizer)
    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIALS if t != "[gMASK]"][:1]
    end_ids += [tokenizer.convert_tokens_to_ids(t) for t in ("<|user|>", "<|observation|>")]
    config = chatglm_config(vocab, end_ids, end_ids[0])
    torch.manual_seed(0)
    model = GlmForCausalLM(glm_config(config)).eval()
    audio0 = tokenizer.convert_tokens_to_ids("<|audio_0|>")
    unwanted = [
        i
        for i in range(audio0)
        if i < len(SPECIALS) or "\ufffd" in tokenizer.decode([i]) or not tokenizer.decode([i])
    ]
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 8.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[unwanted, 0] = -3.0
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        chatglm_state_dict(model.state_dict(), 2), str(folder / "model-00001-of-00001.safetensors")
    )
    (folder / "config.json").write_text(json.dumps(config))
    return model


class FakeWhisperVQEncoder:
    """FAKE of upstream's ``WhisperVQEncoder`` (speech_tokenizer/modeling_whisper.py
    at eb00ce9) as our code calls it: ``from_pretrained(path)``, ``.eval()``,
    ``.to(device)``, ``config.pooling_kernel_size``, ``conv1``/``conv2`` with
    Whisper's strides (1, 2), and ``model(input_features=, attention_mask=)``
    returning ``.quantized_token_ids`` at 12.5 Hz. Inside: two random convs,
    pooling and the nearest of 256 random code vectors, not Whisper."""

    loaded: list[tuple[str, dict[str, Any]]] = []

    def __init__(self) -> None:
        import torch

        torch.manual_seed(1)
        self.config = SimpleNamespace(pooling_kernel_size=4)
        self.conv1 = torch.nn.Conv1d(128, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv1d(16, 16, 3, stride=2, padding=1)
        self.pool = torch.nn.AvgPool1d(4)
        self.codebook = torch.randn(AUDIO_TOKENS, 16)
        self.calls: list[tuple[int, ...]] = []

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> FakeWhisperVQEncoder:
        cls.loaded.append((path, kwargs))
        return cls()

    def eval(self) -> FakeWhisperVQEncoder:
        return self

    def to(self, device: str) -> FakeWhisperVQEncoder:
        assert device == "cpu"
        return self

    def __call__(self, input_features: Any, attention_mask: Any = None) -> SimpleNamespace:
        import torch

        self.calls.append(tuple(input_features.shape))
        act = torch.nn.functional.gelu
        hidden = self.pool(act(self.conv2(act(self.conv1(input_features)))))
        distance = torch.cdist(hidden.transpose(1, 2), self.codebook[None])
        return SimpleNamespace(quantized_token_ids=distance.argmin(-1))


class FakeAudioDecoder:
    """FAKE of upstream's ``flow_inference.AudioDecoder`` (at eb00ce9):
    ``AudioDecoder(config_path, flow_ckpt_path, hift_ckpt_path, device)``,
    ``token2wav(token, uuid, prompt_token, prompt_feat, embedding, finalize)``
    -> (speech (1, samples) at 22.05 kHz, mel (1, 80, frames)), per-uuid
    caches in ``mel_overlap_dict`` / ``hift_cache_dict`` that upstream deletes
    only on ``finalize``. Inside: a tone per token, not flow matching."""

    instances: list[FakeAudioDecoder] = []

    def __init__(
        self, config_path: str, flow_ckpt_path: str, hift_ckpt_path: str, device: str = "cuda"
    ) -> None:
        for path in (config_path, flow_ckpt_path, hift_ckpt_path):
            assert Path(path).is_file(), path
        self.device = device
        self.mel_overlap_dict: dict[str, Any] = defaultdict(lambda: None)
        self.hift_cache_dict: dict[str, Any] = defaultdict(lambda: None)
        self.calls: list[dict[str, Any]] = []
        FakeAudioDecoder.instances.append(self)

    def token2wav(
        self,
        token: Any,
        uuid: str,
        prompt_token: Any = None,
        prompt_feat: Any = None,
        embedding: Any = None,
        finalize: bool = False,
    ) -> tuple[Any, Any]:
        import torch

        tokens = token[0].tolist()
        self.calls.append(
            {
                "uuid": uuid,
                "tokens": tokens,
                "prompt_tokens": prompt_token[0].tolist(),
                "prompt_frames": int(prompt_feat.shape[1]),
                "feat_dims": int(prompt_feat.shape[2]),
                "finalize": finalize,
            }
        )
        if finalize:
            del self.mel_overlap_dict[uuid], self.hift_cache_dict[uuid]
        else:
            self.mel_overlap_dict[uuid] = torch.zeros(1, 80, 2)
            self.hift_cache_dict[uuid] = {"mel": torch.zeros(1, 80, 1)}
        t = np.arange(SAMPLES_PER_TOKEN) / 22_050
        speech = np.concatenate([0.3 * np.sin(2 * np.pi * (200 + tok) * t) for tok in tokens])
        frames = round(len(tokens) * 22_050 / 256 / 12.5)
        return torch.from_numpy(speech.astype(np.float32))[None], torch.zeros(1, 80, frames)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """weights/ with glm-4-voice/{glm-4-voice-9b, -tokenizer, -decoder} made
    of the tiny models above."""
    torch_extra()
    from transformers import WhisperFeatureExtractor

    weights = tmp_path_factory.mktemp("weights")
    root = weights / "glm-4-voice"
    tokenizer = make_tokenizer(root / "glm-4-voice-9b")
    make_language_model(root / "glm-4-voice-9b", tokenizer)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(root / "glm-4-voice-tokenizer")
    decoder = root / "glm-4-voice-decoder"
    decoder.mkdir()
    for name in ("config.yaml", "flow.pt", "hift.pt"):
        (decoder / name).write_bytes(b"not read by the fake")
    return weights


@pytest.fixture(scope="module")
def tiny_server(tiny_weights: Path) -> Iterator[tuple[GenerationServer, str]]:
    """Our model server in this process, on the tiny LM loaded from its
    ChatGLM checkpoint through the key mapping."""
    from models.s2s.glm4voice_checkpoint import load_language_model
    from models.s2s.glm4voice_server import TransformersGenerator

    model, end_ids = load_language_model(
        tiny_weights / "glm-4-voice" / "glm-4-voice-9b", "cpu", "float32"
    )
    server = GenerationServer(TransformersGenerator(model, end_ids))
    with serve_in_thread(server) as url:
        yield server, url


@pytest.fixture
def upstream_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    torch_extra()
    fake_modules(
        monkeypatch,
        speech_tokenizer={},
        **{"speech_tokenizer.modeling_whisper": {"WhisperVQEncoder": FakeWhisperVQEncoder}},
        flow_inference={"AudioDecoder": FakeAudioDecoder},
    )


def glm_config_for(url: str, **kwargs: Any) -> S2SConfig:
    values: dict[str, Any] = {
        "backend": "glm-4-voice",
        "base_url": url,
        "device": "cpu",
        "dtype": "float32",
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": 120,
        **kwargs,
    }
    return S2SConfig(**values)


def glm4voice_from(tiny_weights: Path, url: str, **kwargs: Any) -> Any:
    from models.s2s import load_speech_to_speech

    model = load_speech_to_speech(glm_config_for(url, **kwargs), tiny_weights)
    assert model is not None
    model.settings.seed = 0
    return model


@pytest.fixture
def glm4voice(
    tiny_weights: Path, tiny_server: tuple[GenerationServer, str], upstream_modules: None
) -> Any:
    """The backend as the registry builds it, on the tiny models (for the
    contract tests too)."""
    return glm4voice_from(tiny_weights, tiny_server[1])


# ------------------------------------------------------- loader and mapping
def test_the_chatglm_checkpoint_maps_onto_transformers_glm(tiny_weights: Path) -> None:
    import torch
    from transformers import GlmForCausalLM

    from models.s2s.glm4voice_checkpoint import glm_config_kwargs, load_language_model

    folder = tiny_weights / "glm-4-voice" / "glm-4-voice-9b"
    config = json.loads((folder / "config.json").read_text())
    kwargs = glm_config_kwargs(config)
    assert kwargs["num_key_value_heads"] == 2 and kwargs["head_dim"] == 8
    assert kwargs["rope_theta"] == 10_000.0 and kwargs["attention_bias"] is True
    loaded, end_ids = load_language_model(folder, "cpu", "float32")
    assert isinstance(loaded, GlmForCausalLM) and end_ids == config["eos_token_id"]
    # The same network: the tiny model as made, before saving in ChatGLM form.
    tokenizer = make_tokenizer(tiny_weights / "again")
    original = make_language_model(tiny_weights / "again", tokenizer)
    ids = torch.tensor([tokenizer.encode("Paris is the capital")])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, original(ids).logits, atol=1e-5)


def test_the_mapping_refuses_what_is_not_glm_4(tiny_weights: Path) -> None:
    from models.s2s.glm4voice_checkpoint import glm_config_kwargs, glm_state_dict

    config = chatglm_config(100, [1], 1)
    with pytest.raises(ValueError, match="add_bias_linear"):
        glm_config_kwargs({**config, "add_bias_linear": True})
    with pytest.raises(KeyError, match="transformer.prefix_encoder"):
        glm_state_dict(
            {"transformer.prefix_encoder.embedding.weight": None}, glm_config_kwargs(config)
        )


def test_the_speech_tokenizer_makes_12_5_tokens_a_second(
    upstream_modules: None, tiny_weights: Path
) -> None:
    from models.s2s.glm4voice_audio import SpeechTokenizer

    tokenizer = SpeechTokenizer.load(tiny_weights / "glm-4-voice" / "glm-4-voice-tokenizer", "cpu")
    assert FakeWhisperVQEncoder.loaded[-1][1] == {"local_files_only": True}
    t = np.arange(2 * 16_000) / 16_000
    tokens = tokenizer.tokens((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    assert len(tokens) == 25 and all(0 <= tok < AUDIO_TOKENS for tok in tokens)
    # Past Whisper's 30 s window the audio goes in pieces, as upstream cuts it.
    long = tokenizer.tokens(np.zeros(31 * 16_000, np.float32))
    # 30 s are 375 tokens; the last second is padded to whole tokens (80 ms): 13.
    assert len(long) == 375 + 13 and tokenizer.model.calls[-1][0] == 2


# ------------------------------------------------------------- the backend
def test_missing_weights_or_gpu_are_refused_with_what_to_get(tmp_path: Path) -> None:
    torch_extra()
    from models.s2s import load_speech_to_speech

    with pytest.raises(BackendUnavailable) as refused:
        load_speech_to_speech(S2SConfig(backend="glm-4-voice", device="cpu"), tmp_path)
    message = str(refused.value)
    for folder in ("glm-4-voice-9b", "glm-4-voice-tokenizer", "glm-4-voice-decoder"):
        assert f"{tmp_path}/glm-4-voice/{folder}" in message
    assert "pip install torch transformers" in message and "THUDM/GLM-4-Voice" in message


def test_no_gpu_is_refused_by_name(tiny_weights: Path) -> None:
    import torch

    from models.s2s import load_speech_to_speech

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendUnavailable, match=r"CUDA GPU.*s2s\.device: cpu"):
        load_speech_to_speech(S2SConfig(backend="glm-4-voice"), tiny_weights)


def test_without_the_upstream_checkout_it_says_where_to_get_it(tiny_weights: Path) -> None:
    from models.s2s import load_speech_to_speech

    with pytest.raises(BackendUnavailable, match=r"speech_tokenizer.*git clone --recursive"):
        load_speech_to_speech(S2SConfig(backend="glm-4-voice", device="cpu"), tiny_weights)


async def collect(reply: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in reply]


async def test_a_spoken_turn_goes_through_tokens_model_and_decoder(
    glm4voice: Any, tiny_server
) -> None:
    server, _url = tiny_server
    model = glm4voice
    await model.start()
    try:
        conversation = model.new_conversation(system_prompt="You are a tour guide.")
        t = np.arange(int(1.6 * 16_000)) / 16_000
        question = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        items = await collect(conversation.respond(question))
        text = "".join(i.text for i in items if isinstance(i, TextDelta))
        speech = [i for i in items if isinstance(i, Speech)]
        assert all(i.role == "assistant" for i in items if isinstance(i, TextDelta))
        assert text and speech and {s.sample_rate for s in speech} == {22_050}
        (exchange,) = conversation.history
        # The prompt as upstream builds it, the user's speech as 20 tokens (1.6 s).
        decode = model.decode
        newline = model.encode("\n")
        assert exchange.user[: len(newline) + 1] == [*newline, model.special.begin_of_audio]
        assert len(exchange.user) == len(newline) + 22
        prompt = decode(conversation.prompt(exchange.user, spoken=True))
        assert prompt.startswith("[gMASK]<sop><|system|>\nUser will provide you with a speech")
        assert "You are a tour guide.<|user|>\n<|begin_of_audio|><|audio_" in prompt
        assert prompt.endswith("<|end_of_audio|><|assistant|>streaming_transcription\n")
        # What the model said is what was shown and heard.
        reply = exchange.reply
        audio = [t - model.special.audio_offset for t in reply if model.special.is_audio(t)]
        assert text == decode([t for t in reply if not model.special.is_audio(t)])
        assert sum(s.audio.size for s in speech) == len(audio) * SAMPLES_PER_TOKEN
        # The decoder got the audio tokens in upstream's blocks, each conditioned
        # on everything before it, the last one final; nothing left in its caches.
        decoder = model.decoder.audio_decoder
        calls = decoder.calls[-len(speech) :]
        sizes = [len(c["tokens"]) for c in calls]
        assert sizes[:-1] == list(BLOCK_SIZES[: len(sizes) - 1])
        assert 0 < sizes[-1] <= BLOCK_SIZES[len(sizes) - 1]
        assert [tok for c in calls for tok in c["tokens"]] == audio
        assert not any(c["finalize"] for c in calls[:-1])
        for n, call in enumerate(calls):
            assert call["prompt_tokens"] == [tok for c in calls[:n] for tok in c["tokens"]]
            assert call["feat_dims"] == 80 and (call["prompt_frames"] > 0) == (n > 0)
        assert not decoder.mel_overlap_dict and not decoder.hift_cache_dict
        assert server.finished  # the server ran it
    finally:
        await model.close()


def no_space(text: str) -> str:
    return "".join(ch for ch in text if not ch.isspace())


async def test_cancel_stops_the_model_and_keeps_only_what_was_heard(
    glm4voice: Any, tiny_server
) -> None:
    server, _url = tiny_server
    model = glm4voice
    model.settings.max_new_tokens = 2000  # it would run on for long
    await model.start()
    try:
        conversation = model.new_conversation(system_prompt="Be brief.")
        reply = conversation.respond("Tell me about Paris.")
        said = ""
        async for item in reply:  # until some text has come
            if isinstance(item, TextDelta):
                said += item.text
                if len(no_space(said)) >= 12:
                    break
        request_id = conversation._request_id
        heard = said[: len(said) // 2]
        await conversation.cancel(heard=heard)
        assert await collect(reply) == []  # the reply ends
        await wait_for(lambda: request_id in server.finished)
        finished = server.finished[request_id]
        assert finished.reason == "cancelled" and finished.produced < 2000
        assert finished.after_cancel is not None and finished.after_cancel <= 1
        # The history keeps the reply through the last text token heard.
        (exchange,) = conversation.history
        kept = model.decode([t for t in exchange.reply if not model.special.is_audio(t)])
        assert no_space(kept).startswith(no_space(heard)) and len(kept) < len(said)
        # The decoder's state for the stopped reply is gone.
        decoder = model.decoder.audio_decoder
        assert not decoder.mel_overlap_dict and not decoder.hift_cache_dict
    finally:
        await model.close()


async def test_the_history_is_kept_as_tokens_and_trimmed_to_its_budget(glm4voice: Any) -> None:
    from models.s2s.glm4voice import Exchange

    model = glm4voice
    model.settings.history_tokens = 300
    conversation = model.new_conversation(system_prompt="You are a tour guide.")
    for n in range(6):
        conversation.history.append(Exchange(model.encode(f"\nquestion {n}"), [7] * 40))
    prompt = conversation.prompt(model.encode("\nlast question"), spoken=False)
    assert len(prompt) <= 300
    text = model.decode(prompt)
    # The persona always, then the most recent exchanges that fit, then the turn.
    assert "with a text instruction" in text and "You are a tour guide." in text
    assert "question 5" in text and "question 0" not in text
    assert text.endswith("<|user|>\nlast question<|assistant|>streaming_transcription\n")


# ------------------------------------------------------ a whole session
@pytest.fixture
async def glm_engines(glm4voice: Any) -> AsyncIterator[Any]:
    from tests.fakes import ToneTTS, fake_engines

    engines = fake_engines(tts=ToneTTS(seconds_per_char=0.01))
    engines.s2s = glm4voice
    await glm4voice.start()
    yield engines
    await glm4voice.close()


async def test_a_session_talks_through_glm4voice_with_the_asr_for_subtitles(glm_engines) -> None:
    from pipelines.timebase import REAL_TIME
    from tests.test_session import QUESTION_EN, make_session, of_type, speak, wait_until

    engines = glm_engines
    model = engines.s2s
    model.settings.max_new_tokens = 60  # about 2 s of speech, played in real time
    session, events = make_session(engines, REAL_TIME, lang="en")
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: len(session.turns) == 1, REAL_TIME, timeout=120)
        turn = session.turns[0]
        # The user's words come from the local ASR (the model does not say them).
        assert len(engines.asr.transcribed) == 1
        finals = [e["text"] for e in of_type(events, "user_text") if e["final"]]
        assert finals == ["What is the capital of France?"]
        # Neither the LLM nor the TTS spoke: the model did.
        assert not engines.llm.requests and not engines.tts.calls
        (conversation,) = model.conversations
        (exchange,) = conversation.history
        assert model.special.begin_of_audio in exchange.user[:3]
        text = model.decode([t for t in exchange.reply if not model.special.is_audio(t)])
        audio_tokens = sum(1 for t in exchange.reply if model.special.is_audio(t))
        shown = " ".join(e["text"] for e in of_type(events, "bot_text"))
        assert no_space(shown) == no_space(text)
        # Every audio token was played: 80 ms of 22.05 kHz speech each, at 48 kHz.
        played = sum(p.played for p in turn.pieces)
        assert all(p.complete and p.played == p.samples for p in turn.pieces)
        assert abs(played - audio_tokens * SAMPLES_PER_TOKEN * 48_000 / 22_050) < 48 * len(
            turn.pieces
        )
        states = [e["value"] for e in of_type(events, "state")]
        assert states[-3:] == ["thinking", "speaking", "listening"]
        for mark in ("asr_final", "llm_first_token", "first_audio_sent", "llm_done", "reply_done"):
            assert mark in turn.marks
        assert session.history.turns[0] == {"role": "user", "content": finals[0]}
        assert no_space(session.history.turns[1]["content"]) == no_space(text)
    finally:
        await session.close()
    assert model.conversations == []  # closed with the session


async def test_barge_in_on_glm4voice_keeps_what_was_heard(glm_engines) -> None:
    from pipelines.timebase import REAL_TIME
    from tests.test_session import QUESTION_EN, make_session, speak, wait_until
    from tests.test_streaming_pipeline import talk_over

    engines = glm_engines
    model = engines.s2s
    model.settings.max_new_tokens = 400  # about 14 s of speech
    session, _events = make_session(engines, REAL_TIME, lang="en")
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: session.state == "speaking", REAL_TIME, timeout=120)
        turn = session.current_turn
        # Talk over it once some of its words have been heard.
        await wait_until(lambda: turn.heard(fillers=False), REAL_TIME, timeout=60)
        assert session.state == "speaking"
        await talk_over(session, REAL_TIME)
        assert turn.interrupted and session.avatar.queued_samples == 0
        (conversation,) = model.conversations
        cancelling = session.speech_to_speech._cancelling
        await wait_until(lambda: cancelling is not None and cancelling.done(), REAL_TIME, 30)
        heard = turn.heard(fillers=False)
        exchange = conversation.history[0]
        kept = model.decode([t for t in exchange.reply if not model.special.is_audio(t)])
        assert heard and no_space(kept).startswith(no_space(heard))
        # Cut at the last token heard: at most one token's characters more.
        assert len(no_space(kept)) - len(no_space(heard)) <= 16
        assert session.history.turns[1] == {"role": "assistant", "content": heard}
    finally:
        await session.close()


# ------------------------------------------------------- per-session mode
async def test_each_session_picks_cascade_or_end_to_end() -> None:
    from fastapi import HTTPException

    from core.config import Config
    from server.sessions import SessionManager, SessionOptions
    from tests.fakes import ScriptedSpeechToSpeech, fake_engines

    engines = fake_engines()
    manager = SessionManager(engines, Config())
    with pytest.raises(HTTPException, match="s2s.backend"):
        await manager.mint(SessionOptions(mode="end-to-end"))
    assert manager._engines_for(SessionOptions()) is engines
    engines.s2s = ScriptedSpeechToSpeech({}, {})
    await manager.mint(SessionOptions(mode="end-to-end", voice="scripted"))
    # The default, with a model configured, is end-to-end; cascade leaves it out.
    assert manager._engines_for(SessionOptions()) is engines
    cascade = manager._engines_for(SessionOptions(mode="cascade"))
    assert cascade.s2s is None and cascade.asr is engines.asr and cascade.health is engines.health
    assert cascade.inference is engines.inference
    with pytest.raises(HTTPException, match="unknown voice"):
        await manager.mint(SessionOptions(mode="cascade", voice="scripted"))  # the TTS's voices


def test_it_declares_what_the_doctor_checks() -> None:
    from core.config import Config
    from models.s2s.glm4voice import GLM4Voice

    needs = GLM4Voice.needs(Config())
    assert [w.path for w in needs.weights] == [
        "glm-4-voice/glm-4-voice-9b/",
        "glm-4-voice/glm-4-voice-tokenizer/",
        "glm-4-voice/glm-4-voice-decoder/",
    ]
    assert "THUDM/glm-4-voice-decoder" in needs.weights[2].fetch
    assert needs.cuda and "THUDM/GLM-4-Voice" in needs.external
    assert {p.module for p in needs.packages} == {"torch", "transformers", "hyperpyyaml"}


async def test_start_runs_our_model_server_as_a_subprocess_and_close_ends_it(
    tiny_weights: Path, upstream_modules: None
) -> None:
    model = glm4voice_from(tiny_weights, url="")  # no s2s.base_url: ours, started here
    await model.start()
    process = model._process
    try:
        assert process is not None and process.poll() is None
        assert model.client.base_url.startswith("http://127.0.0.1:")
        conversation = model.new_conversation(system_prompt="Be brief.")
        items = await collect(conversation.respond("Hello there."))
        assert any(isinstance(i, TextDelta) for i in items)
    finally:
        await model.close()
    assert process.poll() is not None  # stopped with the backend
