from pipelines.splitter import SentenceSplitter


def split_streamed(text: str, step: int = 1) -> list[str]:
    splitter = SentenceSplitter()
    pieces: list[str] = []
    for i in range(0, len(text), step):
        pieces += splitter.push(text[i : i + step])
    return pieces + splitter.flush()


def test_english_first_clause_then_sentences():
    text = "Sure, the capital of France is Paris. It has about 2.1 million people, mostly. Bye"
    assert split_streamed(text) == [
        "Sure,",
        "the capital of France is Paris.",
        "It has about 2.1 million people, mostly.",
        "Bye",
    ]


def test_chinese_marks():
    text = "好的，法国的首都是巴黎。巴黎有很多博物馆！你还想知道什么？"
    assert split_streamed(text) == [
        "好的，",
        "法国的首都是巴黎。",
        "巴黎有很多博物馆！",
        "你还想知道什么？",
    ]


def test_numbers_times_and_abbreviations_do_not_split():
    text = "At 10:30 Dr. Smith paid 1,000 dollars. Done."
    assert split_streamed(text, step=3) == ["At 10:30 Dr. Smith paid 1,000 dollars.", "Done."]


def test_markdown_is_not_spoken():
    assert split_streamed("**Paris** is the `capital`.") == ["Paris is the capital."]


def test_mixed_language_and_token_chunks():
    text = "Hello! 你好，我是 Mei。"
    assert split_streamed(text, step=4) == ["Hello!", "你好，我是 Mei。"]


def test_empty_reply():
    assert split_streamed("") == []
