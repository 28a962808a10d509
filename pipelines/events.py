"""The session's protocol as types: what the page sends (client messages),
what the server sends back (events), the session states and the latency marks
of a turn. The server, the metrics, the docs (``GET /api/protocol``: their
JSON Schema) and the tests share these instead of bare strings."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

MAX_TEXT_CHARS = 500


class State(StrEnum):
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


class Mark(StrEnum):
    """Moments of a turn, in seconds after the end of the user's speech."""

    ASR_FINAL = "asr_final"
    LLM_FIRST_TOKEN = "llm_first_token"
    FIRST_CLAUSE = "first_clause"
    TTS_FIRST_AUDIO = "tts_first_audio"  # the first audio pushed (filler or opener included)
    FIRST_AUDIO_SENT = "first_audio_sent"  # ... released to the tracks
    ANSWER_AUDIO_SENT = "answer_audio_sent"  # the answer proper's first audio released
    LLM_DONE = "llm_done"
    REPLY_DONE = "reply_done"
    INTERRUPTED = "interrupted"


class Stage(StrEnum):
    """Shared stages whose failure is reported (``error`` events, /health)."""

    ASR = "asr"
    LLM = "llm"
    TTS = "tts"
    S2S = "s2s"  # the end-to-end model in place of the three (models/s2s/)


class EndReason(StrEnum):
    HANGUP = "hangup"
    DELETED = "deleted"
    IDLE_TIMEOUT = "idle_timeout"
    MAX_DURATION = "max_duration"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    SERVER_SHUTDOWN = "server_shutdown"
    CONNECTION_FAILED = "connection_failed"
    # The node holding the session stopped (cluster): the same token reconnects
    # on a live node and the conversation continues.
    NODE_LOST = "node_lost"


# ------------------------------------------------------------ server -> page
class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)


class StateEvent(_Event):
    type: Literal["state"] = "state"
    value: State


class UserTextEvent(_Event):
    """What the user said. ``final: false``: empty text when speech starts,
    then, with a recognizer that streams partials (or an end-to-end model
    that transcribes as it listens), the transcript so far each time it
    changes, replacing the last one. ``final: true``: the turn's transcript
    (or the typed text)."""

    type: Literal["user_text"] = "user_text"
    text: str
    final: bool


class BotTextEvent(_Event):
    """A piece of the reply as its audio starts; ``spoken: false`` when its
    synthesis failed (shown, not heard)."""

    type: Literal["bot_text"] = "bot_text"
    text: str
    spoken: bool = True


class TurnEvent(_Event):
    """When a turn ends: its marks (``latency``, keys from ``Mark`` plus
    ``barge_in_detected_after``) and playback gaps."""

    type: Literal["turn"] = "turn"
    index: int
    latency: dict[str, float]
    playback: dict[str, float]


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    message: str
    stage: Stage | None = None
    detail: str | None = None
    retry_after_s: float | None = None


class EndedEvent(_Event):
    type: Literal["ended"] = "ended"
    reason: EndReason


ServerEvent = Annotated[
    StateEvent | UserTextEvent | BotTextEvent | TurnEvent | ErrorEvent | EndedEvent,
    Field(discriminator="type"),
]


def to_wire(event: _Event) -> dict[str, object]:
    """The JSON object sent on the data channel (absent optional fields left out)."""
    return event.model_dump(mode="json", exclude_none=True)


# ------------------------------------------------------------ page -> server
class TextMessage(BaseModel):
    """A typed question; it interrupts a reply in progress."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)
    type: Literal["text"]
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class InterruptMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["interrupt"]


ClientMessage = Annotated[TextMessage | InterruptMessage, Field(discriminator="type")]
_CLIENT = TypeAdapter(ClientMessage)
_SERVER = TypeAdapter(ServerEvent)


def parse_client_message(data: object) -> TextMessage | InterruptMessage:
    """A client message, or ValueError saying in one line what is wrong."""
    try:
        return _CLIENT.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        if first["type"] == "union_tag_invalid":
            kind = data.get("type") if isinstance(data, dict) else None
            shown = kind if isinstance(kind, str) and len(kind) <= 40 else "?"
            raise ValueError(f"unknown message type {shown!r} (known: text, interrupt)") from None
        readable = {
            "string_too_short": "empty text",
            "string_too_long": f"text longer than {MAX_TEXT_CHARS} chars",
            "string_type": "text must be a string",
            "missing": f"{where.split('.')[-1]} is missing",
            "union_tag_not_found": "a message needs a 'type' (text or interrupt)",
        }
        raise ValueError(readable.get(first["type"], f"{where}: {first['msg']}")) from None


def protocol_schema() -> dict[str, object]:
    """JSON Schema of both directions (served at /api/protocol)."""
    return {
        "client_messages": _CLIENT.json_schema(),
        "server_events": _SERVER.json_schema(),
    }
