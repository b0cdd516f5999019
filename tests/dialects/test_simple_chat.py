from __future__ import annotations

import json

import pytest

from ai_gateway.dialects import simple_chat
from ai_gateway.errors import InvalidRequestError
from ai_gateway.types import ChatResponse, TextPart, Usage


@pytest.mark.parametrize(
    ("body", "model"),
    [
        ({"prompt": "x"}, "default"),
        ({"prompt": "x", "provider": "ollama"}, "ollama"),
        ({"prompt": "x", "model": "gpt-4o-mini"}, "gpt-4o-mini"),
        ({"prompt": "x", "provider": "openai", "model": "gpt-4o"}, "openai/gpt-4o"),
    ],
)
def test_target_selection(body: dict[str, object], model: str) -> None:
    assert simple_chat.parse_request(body, 10, 100).model == model


def test_system_and_messages() -> None:
    req = simple_chat.parse_request(
        {"messages": [{"role": "user", "content": "a"}], "system": "s", "max_tokens": 5, "temperature": 1},
        10,
        100,
    )
    assert [m.role for m in req.messages] == ["system", "user"] and req.max_tokens == 5


def test_prompt_required() -> None:
    with pytest.raises(InvalidRequestError) as exc:
        simple_chat.parse_request({"provider": "ollama"}, 10, 100)
    assert exc.value.param == "prompt"


def test_render_response_and_done() -> None:
    resp = ChatResponse("i", "m", [TextPart("hi")], usage=Usage(1, 2))
    body = simple_chat.render_response(resp, "rid", "ollama", "llama3.2", None, False, [])
    assert body["usage"] == {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}
    assert body["content"] == "hi" and body["cost_usd"] is None and body["attempts"] == []
    done = simple_chat.render_done(Usage(1, 2), None, "ollama", "llama3.2", False, "stop").decode()
    first, second = [line[6:] for line in done.split("\n") if line.startswith("data: ")]
    assert json.loads(first)["type"] == "done" and second == "[DONE]"
