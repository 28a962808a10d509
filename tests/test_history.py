from pipelines.history import ChatHistory


def test_system_prompt_always_first_and_never_trimmed():
    history = ChatHistory("persona", max_messages=4)
    for i in range(10):
        history.add_user(f"q{i}")
        history.add_assistant(f"a{i}")
    messages = history.messages()
    assert messages[0] == {"role": "system", "content": "persona"}
    assert [m["content"] for m in messages[1:]] == ["q8", "a8", "q9", "a9"]


def test_history_starts_with_user_after_trim():
    history = ChatHistory("p", max_messages=3)
    for i in range(3):
        history.add_user(f"q{i}")
        history.add_assistant(f"a{i}")
    assert history.messages()[1]["role"] == "user"


def test_unanswered_user_messages_merge():
    history = ChatHistory("p")
    history.add_user("what is")
    history.add_assistant("")  # interrupted before anything was heard
    history.add_user("the capital of France?")
    assert history.turns == [{"role": "user", "content": "what is the capital of France?"}]
