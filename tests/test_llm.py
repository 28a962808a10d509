"""The OpenAI-compatible client's KV-cache slot pinning (no server needed)."""

from core.config import LLMConfig
from models.llm.openai_compatible import OpenAICompatibleChat


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
