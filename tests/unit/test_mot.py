"""Mixture of Thoughts without models: selection, the interaction layer's algebra, the router's
numpy/torch agreement, the text set and its split, and the ``mot`` strategy's decisions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.config import ExpertConfig, load_config
from orchestrator.errors import ConfigError
from orchestrator.evaluation.datasets import RoutingDataset
from orchestrator.types import Message, Query
from routers import list_strategies
from routers.artifacts import Artifact, ArtifactStore
from routers.embeddings import get_embedder
from routers.mot.members import MemberSpec
from routers.mot.router import router_logits, select
from routers.mot.strategy import MoTStrategy
from workers import list_backends

torch = pytest.importorskip("torch")


def test_registered() -> None:
    assert "mot" in list_strategies() and "mot" in list_backends()


def test_member_spec() -> None:
    assert MemberSpec.parse("smollm2@12") == MemberSpec("smollm2", 12)
    assert MemberSpec.parse("/m/folder") == MemberSpec("/m/folder")
    assert str(MemberSpec.parse("minilm")) == "minilm"
    with pytest.raises(ConfigError, match="layer count"):
        MemberSpec.parse("smollm2@x")


def test_select_primary_is_best_leader_and_peers_follow() -> None:
    # member 2 scores highest but is an encoder: it cannot lead, it becomes the first peer
    s = select(np.array([0.5, 1.0, 3.0, -1.0]), leaders=[0, 1, 3], k=3)
    assert s.primary == 1 and s.peers == (2, 0)
    assert math.isclose(sum(s.peer_weights), 1.0) and s.peer_weights[0] > s.peer_weights[1]
    assert math.isclose(sum(s.probs), 1.0)
    lw = s.log_weights(4)
    assert lw[1] == -np.inf and lw[3] == -np.inf and np.isfinite(lw[[0, 2]]).all()
    assert select(np.array([0.0, 1.0]), leaders=[0], k=1).peers == ()
    with pytest.raises(ValueError, match="lead"):
        select(np.zeros(2), leaders=[], k=2)


def test_router_numpy_matches_torch() -> None:
    from routers.mot.model import MoTNetwork

    net = MoTNetwork([8, 12], latent=8, heads=2, num_interactions=2, embed_dim=5, router_hidden=7)
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    expected = net.router(torch.from_numpy(x)).detach().numpy()
    assert np.allclose(router_logits(net.export(), x), expected, atol=1e-5)


def _peers(net: Any, batch: int) -> list[Any]:
    from routers.mot.model import PeerStates

    g = torch.Generator().manual_seed(0)
    return [
        PeerStates(
            1, torch.randn(batch, 5, 12, generator=g), torch.ones(batch, 5, dtype=torch.bool)
        ),
        PeerStates(
            2, torch.randn(batch, 3, 6, generator=g), torch.ones(batch, 3, dtype=torch.bool)
        ),
    ]


def test_interaction_is_identity_at_init_and_learns_from_the_router() -> None:
    from routers.mot.model import InteractionLayer
    from routers.mot.training import peer_log_weights

    layer = InteractionLayer([8, 12, 6], latent=16, heads=4)
    h = torch.randn(2, 7, 8)
    logits = torch.zeros(2, 3, requires_grad=True)
    log_w = peer_log_weights(logits, [(1, 2), (1, 2)])
    mem = layer.memory(_peers(layer, 2), log_w)
    assert mem.k.shape == (2, 4, 8, 4)  # 5 + 3 peer tokens, 4 heads of 4
    assert torch.equal(layer(0, h, mem), h)  # tanh(0) = 0: exactly the primary alone
    with torch.no_grad():
        layer.gate.fill_(1.0)
    out = layer(0, h, mem)
    assert out.shape == h.shape and not torch.allclose(out, h)
    out.pow(2).sum().backward()  # the LM loss reaches the router through the peers' weights
    assert logits.grad is not None and logits.grad[:, 1:].abs().sum() > 0


def test_interaction_skips_rows_without_peers() -> None:
    from routers.mot.model import InteractionLayer

    layer = InteractionLayer([8, 12, 6], latent=16, heads=4)
    with torch.no_grad():
        layer.gate.fill_(1.0)
    log_w = torch.tensor([[-math.inf, 0.0, -math.inf], [-math.inf, -math.inf, -math.inf]])
    h = torch.randn(2, 4, 8)
    out = layer(0, h, layer.memory(_peers(layer, 2), log_w))
    assert torch.equal(out[1], h[1]) and not torch.allclose(out[0], h[0])


def test_peer_log_weights() -> None:
    from routers.mot.training import peer_log_weights

    lw = peer_log_weights(torch.tensor([[1.0, 2.0, 3.0, 0.0]]), [(1, 2)])
    assert torch.isinf(lw[0, [0, 3]]).all()
    assert math.isclose(float(torch.logsumexp(lw[0, [1, 2]], 0)), 0.0, abs_tol=1e-6)


def _dataset() -> RoutingDataset:
    prompts = [f"Question number {i}: what is {i} plus {i}?" for i in range(40)] + ["no answer"]
    answers: list[str | None] = [f"The answer is {2 * i}, " + "because " * 20 for i in range(40)]
    return RoutingDataset(
        name="toy",
        prompts=prompts,
        categories=["math"] * 41,
        models=["m"],
        scores=np.ones((41, 1)),
        costs=np.zeros((41, 1)),
        ids=[str(i) for i in range(41)],
        cost_source="none",
        answers=[*answers, None],
    )


def test_text_set_and_split() -> None:
    from routers.mot.training import build_texts, split_texts

    pairs = build_texts(_dataset(), max_prompt_chars=20, max_answer_chars=30)
    assert len(pairs) == 40  # the row without an answer is dropped
    assert all(len(p.prompt) <= 20 and len(p.answer) <= 30 for p in pairs)
    assert pairs[3].answer.startswith("The answer is 6")
    assert not pairs[3].complete  # cut: its turn gets no end-of-turn token in training
    assert build_texts(_dataset(), 20, 500)[3].complete
    train, held = split_texts(pairs, 0.25, seed=0)
    assert held and train and not {p.prompt for p in train} & {p.prompt for p in held}
    # membership depends on the question, not the order
    assert set(split_texts(list(reversed(pairs)), 0.25, seed=0)[1]) == set(held)
    small_train, small_held = split_texts(pairs, 0.25, seed=0, limit=12)
    assert len(small_train) + len(small_held) == 12


# -- the strategy ---------------------------------------------------------------------------------


EMBED = "unit-test-mot-embeddings"  # an embedder key whose cache is primed: no model is loaded


def _state(embed_dim: int = 4) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    return {
        "kind": "mot",
        "members": ["smollm2", "/models/tiny", "minilm"],
        "models": ["smollm2", "/models/tiny", "minilm"],
        "generative": [True, True, False],
        "k": 2,
        "embedding_model": EMBED,
        "network": {
            "router.net.0.weight": rng.normal(size=(6, embed_dim)).astype(np.float32),
            "router.net.0.bias": np.zeros(6, np.float32),
            "router.net.2.weight": rng.normal(size=(3, 6)).astype(np.float32),
            "router.net.2.bias": np.array([0.0, 0.0, 5.0], np.float32),  # minilm scores high
        },
    }


def _experts(mot_model: str = "latest", **engine: Any) -> list[ExpertConfig]:
    return [
        ExpertConfig(name="smol", model="smollm2"),
        ExpertConfig(name="mot", backend="mot", model=mot_model, engine=engine),
    ]


def _query(text: str) -> Query:
    get_embedder(EMBED).prime([text], np.random.default_rng(len(text)).normal(size=(1, 4)))
    return Query(messages=(Message("user", text),))


def test_strategy_routes_to_the_mot_expert_and_reports_the_selection() -> None:
    strategy = MoTStrategy(_experts(), {})
    strategy.use_artifact(Artifact("mot", "unsaved", {}, _state()))
    (d,) = strategy.route([_query("What is the capital of France?")])
    assert d.strategy == "mot" and d.experts == ("mot",) and d.version == "unsaved"
    assert d.details["primary"] in ("smollm2", "/models/tiny")
    assert d.details["peers"] == ["minilm"] and d.details["k"] == 2  # the encoder only peers
    assert d.candidates[0].expert == "mot"
    # the members that are pool experts follow, as fallbacks: the primary alone first
    if d.details["primary"] == "smollm2":
        assert [c.expert for c in d.candidates] == ["mot", "smol"]
    assert "primary" in d.reason and "minilm" in d.reason


def test_strategy_needs_exactly_one_mot_expert() -> None:
    strategy = MoTStrategy([ExpertConfig(name="smol", model="smollm2")], {})
    with pytest.raises(ConfigError, match="backend: mot"):
        strategy.use_artifact(Artifact("mot", "unsaved", {}, _state()))
    named = MoTStrategy(_experts(), {"expert": "smol"})
    with pytest.raises(ConfigError, match="no expert with backend 'mot'"):
        named.use_artifact(Artifact("mot", "unsaved", {}, _state()))


def test_strategy_rejects_foreign_artifacts() -> None:
    with pytest.raises(ConfigError, match="cannot serve"):
        MoTStrategy(_experts(), {}).use_artifact(Artifact("mot", "v1", {}, {"kind": "coe"}))


def test_strategy_and_backend_must_serve_one_version(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    for _ in range(2):
        store.save("mot", _state(), options={}, dataset={})
    ok = MoTStrategy(_experts("latest", artifacts_dir=str(tmp_path)), {}, artifacts_dir=tmp_path)
    ok.setup()
    assert ok.version == "v0002"
    stale = MoTStrategy(_experts("v0001", artifacts_dir=str(tmp_path)), {}, artifacts_dir=tmp_path)
    with pytest.raises(ConfigError, match="same version"):
        stale.setup()


def test_options_are_checked_at_config_load() -> None:
    experts = [e.model_dump() for e in _experts()]
    with pytest.raises(ConfigError, match=r"routing\.strategies\.mot\.k"):
        load_config(None, experts=experts, routing={"strategies": {"mot": {"k": 0}}})
    with pytest.raises(ConfigError, match=r"routing\.strategies\.mot\.nope"):
        load_config(None, experts=experts, routing={"strategies": {"mot": {"nope": 1}}})


def test_stop_strings_in_the_decode_loop() -> None:
    from routers.mot.inference import _safe_prefix, _stop_at

    assert _stop_at("Paris is nice", ["nice", "ice"]) == "Paris is "
    assert _stop_at("Paris", ["x", ""]) is None
    # a tail that could begin a stop string is held back; an incomplete character too
    assert _safe_prefix("The answer: fo", ["four"]) == "The answer: "
    assert _safe_prefix("The answer\ufffd", []) == "The answer"
    assert _safe_prefix("abc", ["zz"]) == "abc"
