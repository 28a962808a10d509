"""The OpenAI-compatible client: llama.cpp's KV-cache slot pinning (no
server needed), and against a fake vLLM on 127.0.0.1 that records what it is
sent: openers through vLLM's ``continue_final_message``, which server it is,
and request timeouts that end in the avatar's fault line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.config import LLMConfig
from models.llm.openai_compatible import LLMRequestFailed, OpenAICompatibleChat
from pipelines.timebase import REAL_TIME
from tests.fakes import ToneTTS, fake_engines, openai_server_app, served
from tests.test_session import canned, make_session, of_type, wait_until


def chat(slots: int) -> OpenAICompatibleChat:
    return OpenAICompatibleChat(LLMConfig(), base_url="http://127.0.0.1:9/v1", slots=slots)


def test_each_conversation_gets_its_own_slot_and_keeps_it():
    llm = chat(slots=4)
    ids = [f"session-{i}" for i in range(4)]
    slots = [llm._extra_body(c)["id_slot"] for c in ids]
    assert sorted(slots) == [0, 1, 2, 3]
    assert [llm._extra_body(c)["id_slot"] for c in ids] == slots  # stable across turns


def test_a_released_slot_goes_to_the_next_conversation():
    llm = chat(slots=2)
    assert llm._extra_body("a")["id_slot"] == 0
    assert llm._extra_body("b")["id_slot"] == 1
    llm.release("a")
    assert llm._extra_body("c")["id_slot"] == 0
    assert llm._extra_body("b")["id_slot"] == 1


def test_more_conversations_than_slots_are_not_pinned_to_a_shared_slot():
    llm = chat(slots=1)
    assert llm._extra_body("a") == {"id_slot": 0, "cache_prompt": True}
    assert llm._extra_body("b") == {"cache_prompt": True}  # llama.cpp picks a slot
    assert chat(slots=0)._extra_body("a") == {}  # other servers: no slot fields
    assert llm._extra_body(None) == {}


# ------------------------------------- against an OpenAI-compatible server
QUESTION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]
WITH_OPENER = [*QUESTION, {"role": "assistant", "content": "Sure,"}]


def remote(base_url: str, **settings: Any) -> LLMConfig:
    return LLMConfig(backend="openai", base_url=base_url, model="qwen", **settings)


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, Any]]]:
    """A fake vLLM on 127.0.0.1 that records each request body."""
    state: dict[str, Any] = {}
    with served(openai_server_app(state)) as url:
        yield f"{url}/v1", state


async def reply(llm: OpenAICompatibleChat, messages: list[dict[str, str]]) -> str:
    return "".join([delta async for delta in llm.stream_chat(messages, conversation="c1")])


async def test_vllm_continues_an_opener_through_its_extra_fields(server):
    url, state = server
    llm = OpenAICompatibleChat(remote(url, server="vllm"))
    assert llm.supports_prefill  # so the pipeline speaks openers
    try:
        assert await reply(llm, WITH_OPENER) == "Hello there."
        body = state["requests"][-1]
        assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
        assert body["messages"][-1] == {"role": "assistant", "content": "Sure,"}
        assert body["model"] == "qwen" and body["stream"] is True
        await reply(llm, QUESTION)  # no opener: an ordinary request
        plain = state["requests"][-1]
        assert "continue_final_message" not in plain and "add_generation_prompt" not in plain
        assert "id_slot" not in plain  # llama.cpp's slot fields are not sent to vLLM
    finally:
        await llm.close()


@pytest.mark.parametrize(
    ("owner", "kind", "openers"), [("vllm", "vllm", True), ("llamacpp", "llama.cpp", True)]
)
def test_auto_asks_the_server_which_it_is(server, owner, kind, openers):
    url, state = server
    state["owned_by"] = owner
    llm = OpenAICompatibleChat.from_config(remote(url), Path("."))
    assert (llm.server, llm.supports_prefill) == (kind, openers)


def test_openers_are_off_with_another_server_and_the_log_says_why(server, caplog):
    url, state = server
    state["owned_by"] = "system"  # what OpenAI's own API says
    config = remote(url, openers={"en": ["Sure,"]})
    with caplog.at_level(logging.INFO, "models.llm.openai_compatible"):
        llm = OpenAICompatibleChat.from_config(config, Path("."))
    assert llm.server == "openai" and not llm.supports_prefill
    assert "openers are off" in caplog.text and "llm.server" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, "models.llm.openai_compatible"):
        unreachable = OpenAICompatibleChat.from_config(
            remote("http://127.0.0.1:9/v1", openers={"en": ["Sure,"]}), Path(".")
        )
    assert not unreachable.supports_prefill and "openers are off" in caplog.text


def test_a_model_name_the_server_does_not_serve_is_warned_about(server, caplog):
    url, state = server
    state["models"] = ["Qwen/Qwen2.5-7B-Instruct"]  # vllm serve without --served-model-name
    OpenAICompatibleChat.from_config(remote(url), Path("."))
    assert "llm.model 'qwen' is not among" in caplog.text
    assert "Qwen/Qwen2.5-7B-Instruct" in caplog.text


async def test_a_server_that_sends_nothing_fails_at_the_first_token_timeout(server):
    url, state = server
    state["first_delay_s"] = 3.0
    llm = OpenAICompatibleChat(remote(url, server="vllm", first_token_timeout_s=0.3))
    try:
        with pytest.raises(LLMRequestFailed, match=r"sent nothing for 0.3 s"):
            await reply(llm, QUESTION)
    finally:
        await llm.close()


async def test_a_reply_past_its_whole_reply_timeout_is_cut(server):
    url, state = server
    state["reply"] = " ".join(["word"] * 200)
    state["word_delay_s"] = 0.02
    llm = OpenAICompatibleChat(remote(url, server="vllm", reply_timeout_s=0.5))
    heard: list[str] = []
    try:
        with pytest.raises(LLMRequestFailed, match=r"longer than 0.5 s \(llm.reply_timeout_s\)"):
            async for delta in llm.stream_chat(QUESTION):
                heard.append(delta)
        assert heard and len(heard) < 200  # it was cut, not refused
    finally:
        await llm.close()


async def test_a_server_that_is_down_is_a_failure_naming_it():
    llm = OpenAICompatibleChat(remote("http://127.0.0.1:9/v1", server="vllm"))
    try:
        with pytest.raises(LLMRequestFailed, match="cannot reach the LLM server at http://127"):
            await reply(llm, QUESTION)
    finally:
        await llm.close()


# --------------------------------------------------- through a session
async def test_an_opener_through_vllm_is_said_then_continued(server):
    url, state = server
    state["reply"] = "the capital of France is Paris."
    llm = OpenAICompatibleChat(remote(url, server="vllm"))
    engines = fake_engines(llm=llm, tts=ToneTTS(seconds_per_char=0.01))  # type: ignore[arg-type]
    engines.openers = {"en": [canned("Sure,")]}
    session, events = make_session(engines, REAL_TIME)
    try:
        session.handle_message({"type": "text", "text": "What is the capital of France?"})
        spoken = lambda: [e["text"] for e in of_type(events, "bot_text")]  # noqa: E731
        await wait_until(lambda: "Paris." in " ".join(spoken()), REAL_TIME)
        assert spoken()[0] == "Sure,"
        body = state["requests"][-1]
        assert body["continue_final_message"] is True
        assert body["messages"][-1] == {"role": "assistant", "content": "Sure,"}
    finally:
        await session.close()
        await llm.close()


async def test_an_llm_timeout_becomes_the_fault_line(server):
    url, state = server
    state["first_delay_s"] = 3.0
    llm = OpenAICompatibleChat(remote(url, server="vllm", first_token_timeout_s=0.3))
    engines = fake_engines(llm=llm, tts=ToneTTS(seconds_per_char=0.01))  # type: ignore[arg-type]
    line = "Sorry, I can't think right now."
    engines.fault_lines = {"en": canned(line)}
    session, events = make_session(engines, REAL_TIME)
    try:
        session.handle_message({"type": "text", "text": "What is the capital of France?"})
        await wait_until(lambda: of_type(events, "error"), REAL_TIME)
        (error,) = of_type(events, "error")
        assert error["stage"] == "llm" and error["message"] == line
        assert "sent nothing for 0.3 s" in error["detail"]
        await wait_until(lambda: line in [e["text"] for e in of_type(events, "bot_text")])
    finally:
        await session.close()
        await llm.close()
