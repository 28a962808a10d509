"""Configuration: a YAML file (configs/cpu.yaml by default), overridden by
VIDEOCHAT_<SECTION>__<KEY> environment variables, then by CLI flags.

Backend names are plain strings here: the backends register themselves in
models/ (which core must not import), and ``models.backends.check_backends``
refuses an unknown name with a ConfigError that lists the registered ones,
before any model loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "cpu.yaml"

Lang = Literal["en", "zh", "auto"]
# "auto": chosen per machine from its calibration (server/machine.py); a number pins it.
AUTO = "auto"
Auto = Literal["auto"]
# What an "auto" becomes when no calibration is at hand (tests, `plan: off`).
AUTO_DEFAULTS: dict[str, int | float] = {
    "server.max_sessions": 4,
    "llm.threads": 1,
    "llm.batch_threads": 1,
    "llm.nice": 10,
    "llm.first_piece_max_words": 4,
    "llm.first_piece_max_cjk": 6,
    "llm.cut_when_queued_audio_below_s": 1.2,
    "tts.threads": 1,
    "tts.parallel_calls": 1,
    "avatar.idle_fps": 25.0,
    "llm.first_token_timeout_s": 20.0,
    "llm.parallel_slots": 4,
}


class _Section(BaseModel):
    # A misspelt key is an error naming it, not a setting silently ignored;
    # values set later (CLI flags, the machine plan) are validated too.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class IceServer(_Section):
    """A STUN or TURN server (aiortc uses at most one of each)."""

    urls: str  # e.g. "stun:stun.example.com:3478" or "turn:turn.example.com:3478?transport=udp"
    username: str | None = None
    credential: str | None = None


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = 8000
    loopback_only: bool = False
    max_sessions: int | Auto = 4  # auto: as many as calibration says this machine holds
    # aiortc hands a mic frame on once N later ones have arrived (its default: 4);
    # a missing packet is waited for whatever N is, so 1 only removes delay.
    mic_prefetch_packets: int = 1
    # STUN/TURN for both peers (the page reads them from GET /api/rtc). The
    # default is aiortc's own; with loopback_only none is used.
    ice_servers: list[IceServer] = Field(
        default_factory=lambda: [IceServer(urls="stun:stun.l.google.com:19302")]
    )
    # Empty: made at first start and kept in weights/api_key (server/auth.py).
    api_key: str = ""
    # Browser origins (scheme://host:port) that may embed the avatar and call the
    # API with CORS; a session minted with its own allowed_origin adds that one.
    allowed_origins: list[str] = Field(default_factory=list)
    # The page's own flow: /offer without a token from the server's own origin
    # (or from a client that sends no Origin, such as curl). False: tokens only.
    open_page: bool = True
    session_token_ttl_s: float = 300.0  # a minted session must be connected within this
    handshake_timeout_s: float = 20.0  # a peer that has not connected by then is dropped
    idle_timeout_s: float = 600.0  # no speech or text for this long ends a session (0 = never)
    max_duration_s: float = 3600.0  # sessions end after this long (0 = never)
    # Per client address, over /offer and /api: this many requests a second, with
    # bursts of http_burst; past it 429 with Retry-After.
    http_requests_per_s: float = 10.0
    http_burst: int = 40
    # Per session, over the data channel: past it an error event, the message dropped.
    messages_per_s: float = 2.0
    messages_burst: int = 10
    max_message_bytes: int = 16_384  # one data-channel message
    max_body_kb: int = 256  # JSON request bodies (avatar uploads have their own limit)
    drain_s: float = 2.0  # on SIGTERM: live sessions are told, then closed after this


class VADConfig(_Section):
    backend: str = "silero"  # a registered VAD backend (models/vad/)
    threshold: float = 0.5
    hangover_ms: int = 300
    min_speech_ms: int = 200
    barge_in_ms: int = 96
    # While the avatar talks, this much user speech pauses the reply (0 = never);
    # it resumes after resume_after_silence_ms of silence unless barge_in_ms of
    # speech interrupt it first.
    pause_on_speech_ms: int = 32
    resume_after_silence_ms: int = 96
    speculate_ms: int = 150  # start ASR+LLM after this much silence; 0 = wait for hangover


class ASRConfig(_Section):
    backend: str = "faster-whisper"  # a registered ASR backend (models/asr/)
    model: str = "whisper-base"
    language: Lang = "auto"
    threads: int = 2
    beam_size: int = 1
    # Where the model runs: "cpu", or a torch device such as "cuda:0" (funasr;
    # faster-whisper here runs on the CPU). A CUDA device torch cannot see is
    # refused at start-up, not silently replaced by the CPU.
    device: str = "cpu"


class LLMConfig(_Section):
    backend: str = "embedded"  # a registered LLM backend (models/llm/)
    model_file: str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    base_url: str = ""
    model: str = "qwen2.5-1.5b"
    # What serves base_url (backend "openai"), which decides whether openers
    # work: "vllm" continues the opener when asked (continue_final_message),
    # "llama.cpp" does so by itself, "openai" (any other server) cannot, so
    # openers are off. "auto": asked once at start-up (GET base_url/models).
    server: Literal["auto", "vllm", "llama.cpp", "openai"] = "auto"
    connect_timeout_s: float = 5.0  # connecting to the LLM server (a failure: the fault line)
    # A whole reply, first token to last (0 = no limit): past it the reply is cut
    # and counts as a failure of the LLM, like first_token_timeout_s below.
    reply_timeout_s: float = 60.0
    api_key: str = "none"
    threads: int | Auto = 1  # generation threads
    batch_threads: int | Auto = 1  # prompt-processing threads
    # llama.cpp's threads run at this nice value (Linux) so that ASR and TTS
    # calls, short and on the way to the user's ear, preempt the LLM's
    # decoding, which runs ahead of playback. 0 = same priority.
    nice: int | Auto = 10
    parallel_slots: int | Auto = 4  # KV-cache slots of the embedded llama.cpp, one per conversation
    context_tokens: int = 4096
    max_tokens: int = 160
    temperature: float = 0.3
    max_history_messages: int = 12
    first_piece_max_words: int | Auto = 4  # speak the first clause early even without a comma
    first_piece_max_cjk: int | Auto = 6
    # Later pieces wait for a sentence end (or a clause mark once long), unless
    # the reply audio still queued drops below this: then the text so far is
    # spoken at its last complete word, so the avatar does not fall silent
    # mid-reply while the LLM writes a long sentence. 0 = never.
    cut_when_queued_audio_below_s: float | Auto = 1.2
    # Pre-synthesized reply openings spoken at once; the LLM continues them
    # (embedded llama.cpp, or backend "openai" on a vLLM or llama.cpp server:
    # see `server`). Empty lists / {} = off.
    use_openers: bool = True
    openers: dict[str, list[str]] = Field(default_factory=dict)
    # The opener is timed to end just before the reply's first piece (it waits
    # for the LLM's first token), but waits at most this long after the end of
    # speech (0 = say it at once).
    opener_wait_s: float = 1.0
    # Said before the opener when, at that moment, the reply's first piece is
    # still expected this many seconds after the opener ends (a busy CPU):
    # a spoken pause ("Let me see.") instead of a silent one. 0 = never.
    fillers: dict[str, list[str]] = Field(default_factory=dict)
    filler_when_silence_ahead_s: float = 0.5
    # A reply ends at the first sentence end once this many seconds of speech
    # are written (estimated from its characters): shorter spoken answers.
    # 0 = no limit. Measured on a slow machine, not made automatic: the
    # model's replies are mostly one sentence already (docs/benchmarks.md).
    max_reply_audio_s: float = 0.0
    # The planner holds the answer until it can play through, but at most this
    # long after its first piece is synthesized (a long reply on a slow
    # machine: pauses later rather than a long silence first).
    max_answer_hold_s: float = 2.0
    # No first token after this long counts as a failure of the LLM (0 = wait;
    # auto: from the calibrated prompt rate, server/machine.py).
    first_token_timeout_s: float | Auto = 20.0
    # Said (and shown) when the LLM is down, erroring or too slow.
    fault_lines: dict[str, str] = Field(
        default_factory=lambda: {
            "en": "Sorry, I can't think right now. Please try again in a moment.",
            "zh": "抱歉，我现在没法思考，请稍后再试。",
        }
    )
    system_prompt: str = "You are a friendly bilingual digital human. Answer briefly."


class TTSConfig(_Section):
    backend: str = "kokoro"  # a registered TTS backend (models/tts/)
    voice_en: str = "af_heart"
    voice_zh: str = "zf_xiaoxiao"
    speed: float = 1.0
    threads: int | Auto = 1  # onnxruntime threads per call
    parallel_calls: int | Auto = 1  # TTS calls of one reply running at once
    # Backends whose voices are offered beside `backend`'s (picked per session;
    # models/tts/voices_router.py). One that cannot run here is left out, logged.
    more_backends: list[str] = Field(default_factory=lambda: ["piper"])
    # gpt-sovits: its api_v2.py server, and where that process sees weights/voices/
    # ("": the same path as here, i.e. the same machine)
    base_url: str = "http://127.0.0.1:9880"
    voice_dir_on_server: str = ""


class S2SConfig(_Section):
    """An end-to-end speech-to-speech model in place of ASR + LLM + TTS."""

    backend: str = ""  # "": off; else a registered speech-to-speech backend (models/s2s/)
    model: str = ""  # its model folder under weights/ ("": glm-4-voice for glm-4-voice)
    voice: str = ""  # "": the backend's default
    # glm-4-voice: its model server, "" = start ours (models/s2s/glm4voice_server.py)
    # as a subprocess on 127.0.0.1; else the URL of one already running.
    base_url: str = ""
    device: str = "cuda"  # "cpu" runs it, very slowly
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    temperature: float = 0.2  # upstream web demo's defaults
    top_p: float = 0.8
    max_new_tokens: int = 2000
    history_tokens: int = 6000  # the prompt's budget: oldest turns go first
    timeout_s: float = 120.0  # a reply's deadline on the model server
    start_timeout_s: float = 600.0  # loading the 9B model


class MuseTalkConfig(_Section):
    """The ``musetalk`` avatar backend (models/avatar/musetalk.py)."""

    device: str = "cuda"  # "cuda", "cuda:1", ... or "cpu" (slow: tests and measurements)
    batch_size: int = 0  # frames per batch of the one worker; 0: measured at start-up
    max_batch_s: float = 0.2  # a measured batch size must finish within this


class AvatarConfig(_Section):
    backend: str = "photo"  # a registered avatar backend (models/avatar/)
    default: str = "astronaut"
    fps: int = 25
    idle_fps: float | Auto = 25.0  # pictures per second while the user has the turn
    size: int = 512
    musetalk: MuseTalkConfig = Field(default_factory=MuseTalkConfig)


class AvatarsConfig(_Section):
    """Limits for avatars prepared from an uploaded photo or video."""

    max_upload_mb: float = 50.0
    max_clip_seconds: float = 30.0
    min_face_px: int = 80  # face width in the source, in pixels


class VoicesConfig(_Section):
    """Offline voice matching (tools/voice_match.py)."""

    # The speaker encoder judging a match (models/speaker/).
    encoder: Literal["voicefilter", "resemblyzer"] = "voicefilter"
    match_budget_s: float = 60.0  # time the style search may take per added voice


class ClusterConfig(_Section):
    """Several nodes behind one API (server/cluster.py, docs/cluster.md)."""

    # redis://host:port/db of the shared registry; empty: a single node.
    redis_url: str = ""
    node_id: str = ""  # empty: "<server.host>:<server.port>"
    # Where the other nodes (and a browser, without one public URL that routes
    # to the node) reach this node's HTTP; empty: http://<server.host>:<server.port>.
    node_url: str = ""
    heartbeat_s: float = Field(default=1.0, gt=0)
    # A node whose heartbeat is this old is dead: its sessions end (node_lost).
    node_ttl_s: float = Field(default=5.0, gt=0)
    # A session of a dead node may reconnect with its token this long after.
    reconnect_window_s: float = Field(default=300.0, ge=0)


class Config(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VIDEOCHAT_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    weights_dir: Path = Path("weights")
    inference_nice: int = 0  # >0: ASR/LLM/TTS threads run this much below media pacing
    server: ServerConfig = Field(default_factory=ServerConfig)
    vad: VADConfig = Field(default_factory=VADConfig)
    asr: ASRConfig = Field(default_factory=ASRConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    tts: TTSConfig = Field(default_factory=TTSConfig)
    s2s: S2SConfig = Field(default_factory=S2SConfig)
    avatar: AvatarConfig = Field(default_factory=AvatarConfig)
    avatars: AvatarsConfig = Field(default_factory=AvatarsConfig)
    voices: VoicesConfig = Field(default_factory=VoicesConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the YAML file (passed as init kwargs).
        return env_settings, init_settings

    @property
    def weights_path(self) -> Path:
        path = self.weights_dir
        return path if path.is_absolute() else REPO_ROOT / path


class ConfigError(ValueError):
    """The configuration is wrong: the message says where and what is allowed."""


def _explain(error: ValidationError, source: str) -> str:
    lines = [f"bad configuration ({source}):"]
    for problem in error.errors():
        where = ".".join(str(p) for p in problem["loc"])
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            *parent, _ = problem["loc"]
            model: Any = Config
            for part in parent:
                model = model.model_fields[str(part)].annotation
            known = ", ".join(sorted(model.model_fields))
            message = f"unknown key (known here: {known})"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """Read the YAML file, apply env vars, then non-None `overrides` (dotted keys
    such as ``server.port``). Raises ConfigError naming every wrong key or value."""
    file = Path(path) if path else DEFAULT_CONFIG
    data: dict[str, Any] = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    try:
        config = Config(**data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, f"{file} and VIDEOCHAT_* variables")) from None
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        target = getattr(config, section) if key else config
        try:
            setattr(target, key or section, value)  # validated (validate_assignment)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, f"--{dotted.replace('.', '-')}")) from None
    return config
