"""The tokenizer-free estimate behind TPM reservations: in the right range, and never shrinking."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ai_gateway.policy.tokens import (
    DEFAULT_OUTPUT_TOKENS,
    IMAGE_TOKENS,
    IMAGE_TOKENS_LOW,
    estimate_input_tokens,
    estimate_reservation,
    estimate_text_tokens,
)
from ai_gateway.types import (
    ChatRequest,
    ImagePart,
    Message,
    NativePart,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCall,
)


def chat(*messages: Message, **kwargs: object) -> ChatRequest:
    return ChatRequest(model="m", messages=list(messages), **kwargs)  # type: ignore[arg-type]


def user(text: str) -> Message:
    return Message("user", [TextPart(text)])


def test_english_is_about_four_characters_a_token() -> None:
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("abcd") == 1
    assert estimate_text_tokens("The quick brown fox jumps over the lazy dog.") == 11  # tiktoken: 10


def test_other_scripts_cost_more_per_character() -> None:
    assert estimate_text_tokens("привет мир") > estimate_text_tokens("hello worl")
    cjk = "你好世界" * 25  # 100 characters; real tokenizers: roughly 70 to 150 tokens
    assert 100 <= estimate_text_tokens(cjk) <= 150


def test_message_framing_and_reply_priming() -> None:
    assert estimate_input_tokens(chat(user("abcd"))) == 3 + 4 + 1
    assert estimate_input_tokens(chat(user("abcd"), user("abcd"))) == 3 + 2 * (4 + 1)


def test_images_cost_a_fixed_amount() -> None:
    base = estimate_input_tokens(chat(Message("user", [])))
    high = chat(Message("user", [ImagePart(url="https://x/y.png")]))
    low = chat(Message("user", [ImagePart(data="AAAA" * 10_000, media_type="image/png", detail="low")]))
    assert estimate_input_tokens(high) - base == IMAGE_TOKENS
    assert estimate_input_tokens(low) - base == IMAGE_TOKENS_LOW  # not the size of the base64


def test_tools_schemas_tool_calls_and_native_blocks_count() -> None:
    base = estimate_input_tokens(chat(user("hi")))
    tool = Tool("lookup", "find a thing", {"type": "object", "properties": {"q": {"type": "string"}}})
    assert estimate_input_tokens(chat(user("hi"), tools=[tool])) > base + 10
    schema = ResponseFormat("json_schema", {"type": "object", "properties": {"answer": {"type": "string"}}})
    assert estimate_input_tokens(chat(user("hi"), response_format=schema)) > base + 5
    call = Message("assistant", tool_calls=[ToolCall("c1", "lookup", '{"q": "a long query string"}')])
    assert estimate_input_tokens(chat(user("hi"), call)) > base + 10
    native = Message("assistant", [NativePart("anthropic", {"type": "thinking", "thinking": "x" * 400})])
    assert estimate_input_tokens(chat(user("hi"), native)) > base + 100


def test_any_json_in_a_schema_is_estimated() -> None:
    tool = Tool("t", parameters={"type": "object", "maximum": 2**70})
    assert estimate_input_tokens(chat(user("hi"), tools=[tool])) > 10


def test_reservation_adds_the_answer_allowance() -> None:
    request = chat(user("abcd"))
    assert estimate_reservation(request) == estimate_input_tokens(request) + DEFAULT_OUTPUT_TOKENS
    capped = chat(user("abcd"), max_tokens=50)
    assert estimate_reservation(capped) == estimate_input_tokens(capped) + 50


@given(st.lists(st.text(max_size=200), min_size=1, max_size=5), st.text(max_size=200))
def test_more_input_never_estimates_fewer_tokens(texts: list[str], more: str) -> None:
    request = chat(*(user(t) for t in texts))
    longer = chat(*(user(t) for t in texts), user(more))
    assert 0 < estimate_input_tokens(request) < estimate_input_tokens(longer)
    assert estimate_text_tokens(texts[0] + more) >= estimate_text_tokens(texts[0])
