import pytest

from pipelines.splitter import SentenceSplitter, ends_sentence


def split_streamed(text: str, step: int = 1, **options) -> list[str]:
    splitter = SentenceSplitter(**options)
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
    assert split_streamed(text, step=3, max_first_words=0) == [
        "At 10:30 Dr. Smith paid 1,000 dollars.",
        "Done.",
    ]


def test_markdown_is_not_spoken():
    assert split_streamed("**Paris** is the `capital`.") == ["Paris is the capital."]


def test_mixed_language_and_token_chunks():
    text = "Hello! 你好，我是 Mei。"
    assert split_streamed(text, step=4) == ["Hello!", "你好，我是 Mei。"]


def test_empty_reply():
    assert split_streamed("") == []


def test_first_piece_is_capped_when_no_mark_comes():
    text = "The capital city of France is Paris and it is lovely. Bye."
    assert split_streamed(text) == [
        "The capital city of",
        "France is Paris and it is lovely.",
        "Bye.",
    ]


def test_first_chinese_piece_is_capped():
    text = "法国的首都是巴黎也是最大的城市。好。"
    assert split_streamed(text) == ["法国的首都是", "巴黎也是最大的城市。", "好。"]


def test_cap_can_be_disabled():
    splitter = SentenceSplitter(max_first_words=0, max_first_cjk=0)
    pieces = splitter.push("one two three four five six seven eight nine ") + splitter.flush()
    assert pieces == ["one two three four five six seven eight nine"]


def test_long_later_sentences_split_at_clauses():
    text = (
        "Sure. London has mild winters and warm summers in most years, "
        "and it rains often, but rarely for long."
    )
    assert split_streamed(text) == [
        "Sure.",
        "London has mild winters and warm summers in most years,",
        "and it rains often, but rarely for long.",
    ]


def test_chinese_cap_does_not_split_a_word():
    text = "今天的天气晴朗阳光明媚。"
    pieces = split_streamed(text)
    assert pieces[0] == "今天的天气晴朗"
    assert "".join(pieces) == text


def test_cut_early_speaks_the_text_so_far_at_its_last_whole_word():
    splitter = SentenceSplitter()
    assert splitter.push("Sure. London has mild win") == ["Sure."]
    # "win" may still be streaming: the cut stops before it.
    assert splitter.cut_early() == ["London has mild"]
    assert splitter.push("ters and warm summers. ") == ["winters and warm summers."]
    assert splitter.cut_early() == []  # nothing left to cut


def test_cut_early_needs_a_few_words():
    splitter = SentenceSplitter()
    splitter.push("Sure. It is")
    assert splitter.cut_early(min_words=3) == []


def test_cut_early_in_chinese_keeps_words_whole():
    splitter = SentenceSplitter()
    assert splitter.push("好的，今天的天气晴朗阳光") == ["好的，"]
    [piece] = splitter.cut_early(min_cjk=4)
    assert "今天的天气晴朗阳光".startswith(piece) and len(piece) >= 4
    rest = splitter.push("明媚。")
    assert piece + "".join(rest) == "今天的天气晴朗阳光明媚。"


@pytest.mark.parametrize(
    "piece, ends",
    [
        ("The capital of France is Paris.", True),
        ('I recommend "To Kill a Mockingbird."', True),
        ("巴黎是法国的首都。", True),
        ("Really?", True),
        ("Sure,", False),
        ("the capital of", False),
        ("好的，", False),
        ("It was written by Dr.", False),
    ],
)
def test_a_piece_ends_a_sentence_only_at_a_sentence_mark(piece, ends):
    assert ends_sentence(piece) is ends
