from __future__ import annotations

import pytest

from orchestrator.config import load_config
from orchestrator.errors import InvalidRequestError, ModelNotFoundError
from orchestrator.ingress import resolve_model, to_query
from orchestrator.protocol import ChatCompletionRequest

STRATEGIES = ["direct", "semantic"]


def cfg(**routing):
    return load_config(
        None,
        experts=[
            {"name": "math", "backend": "echo", "model": "x"},
            {"name": "code", "backend": "echo", "model": "x"},
        ],
        routing={"default_strategy": "semantic", **routing},
    )


def req(**kw):
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], **kw}
    return ChatCompletionRequest.model_validate(body)


def test_resolution() -> None:
    c = cfg(aliases={"gpt-4o-mini": "code", "gpt-4": "router/direct"})
    assert resolve_model("math", c, STRATEGIES).expert == "math"
    auto = resolve_model("auto", c, STRATEGIES)
    assert (auto.strategy, auto.resolution) == ("semantic", "routed")
    assert resolve_model("router/direct", c, STRATEGIES).strategy == "direct"
    alias = resolve_model("gpt-4o-mini", c, STRATEGIES)
    assert (alias.expert, alias.resolution) == ("code", "alias")
    assert resolve_model("gpt-4", c, STRATEGIES).strategy == "direct"
    unknown = resolve_model("gpt-4o", c, STRATEGIES)
    assert (unknown.strategy, unknown.resolution) == ("semantic", "unknown")


def test_unknown_model_rejected_by_policy() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("gpt-4o", cfg(unknown_model="reject"), STRATEGIES)
    assert info.value.status_code == 404 and info.value.param == "model"
    assert "router/semantic" in info.value.message
    with pytest.raises(ModelNotFoundError):
        resolve_model("router/nope", cfg(), STRATEGIES)


def test_every_role_and_text_parts() -> None:
    r = req(
        messages=[
            {"role": "system", "content": "s"},
            {"role": "developer", "content": "d"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
            {"role": "tool", "content": "42", "tool_call_id": "1"},
            {"role": "user", "content": "last"},
        ],
        max_completion_tokens=9,
        max_tokens=99,
        stop="END",
        seed=3,
        temperature=0.5,
        vendor_field={"x": 1},
        k=2,
        max_cost_usd=0.01,
    )
    q = to_query(r, cfg())
    assert [m.role for m in q.messages] == [
        "system",
        "developer",
        "user",
        "assistant",
        "tool",
        "user",
    ]
    assert q.messages[2].content == "a\nb"
    assert q.text == "last"
    assert q.sampling.max_tokens == 9  # max_completion_tokens wins
    assert q.sampling.stop == ("END",) and q.sampling.seed == 3 and q.sampling.temperature == 0.5
    assert q.options.k == 2 and q.options.max_cost_usd == 0.01


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"n": 3}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": [{"role": "user", "content": "  "}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}] * 600}, "messages"),
    ],
)
def test_limits(kw: dict, param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        to_query(req(**kw), cfg())
    assert info.value.param == param
