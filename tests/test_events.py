"""The protocol's types: parsing client messages, the wire form of events, and
docs/api.md documenting every type the code defines."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

from pipelines import events
from pipelines.events import ErrorEvent, Stage, parse_client_message, protocol_schema, to_wire

API_DOC = (Path(__file__).parent.parent / "docs" / "api.md").read_text(encoding="utf-8")


def literal_types(union: object) -> list[str]:
    """The ``type`` literal of each model in a discriminated union."""
    members = typing.get_args(typing.get_args(union)[0])
    return [typing.get_args(m.model_fields["type"].annotation)[0] for m in members]


def test_every_message_and_event_type_is_documented():
    for kind in literal_types(events.ServerEvent) + literal_types(events.ClientMessage):
        assert f'"type": "{kind}"' in API_DOC, kind
    for reason in events.EndReason:
        assert f"`{reason}`" in API_DOC, reason
    for mark in events.Mark:
        assert f"`{mark}`" in API_DOC, mark


def test_the_wire_form_leaves_out_absent_fields():
    assert to_wire(ErrorEvent(message="x")) == {"type": "error", "message": "x"}
    wire = to_wire(ErrorEvent(message="down", stage=Stage.LLM))
    assert json.loads(json.dumps(wire)) == {"type": "error", "message": "down", "stage": "llm"}


@pytest.mark.parametrize(
    "message, problem",
    [
        ({"type": "text", "text": " "}, "empty text"),
        ({"type": "text", "text": 3}, "must be a string"),
        ({"type": "text"}, "missing"),
        ({"text": "hi"}, "needs a 'type'"),
        ({"type": "dance"}, "unknown message type 'dance'"),
        ({"type": "d" * 100}, "unknown message type '?'"),
    ],
)
def test_bad_client_messages_are_explained_in_one_line(message, problem):
    with pytest.raises(ValueError, match=problem):
        parse_client_message(message)


def test_client_messages_parse():
    assert parse_client_message({"type": "text", "text": "  hi "}).text == "hi"
    assert parse_client_message({"type": "interrupt", "extra": 1}).type == "interrupt"


def test_the_schema_covers_both_directions():
    schema = json.dumps(protocol_schema())
    for kind in literal_types(events.ServerEvent) + literal_types(events.ClientMessage):
        assert f'"{kind}"' in schema
