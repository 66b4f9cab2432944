"""The MoT router: query embedding → member scores → top-K selection and a primary.

The router is a two-layer MLP (:class:`routers.mot.model.RouterNet`) over the query's MiniLM
embedding (:func:`routers.embeddings.get_embedder`). Serving evaluates it with numpy from the
artifact's arrays (:func:`router_logits`), so the ``mot`` strategy never imports torch; training
evaluates the torch module with the same weights, and both call :func:`select`.

Selection (:func:`select`): the **primary** is the highest-scoring member that can lead (a
causal LM: encoders have no LM head); the **peers** are the next ``k − 1`` members by score
among the rest, whatever their kind. Peers' weights are the softmax of their scores
renormalised over the selected peers; the interaction layers add ``log w`` to the attention
logits of each peer's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PREFIX = "router.net."


def router_logits(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Scores [N, M] for embeddings ``x`` [N, D], from an artifact's ``network`` arrays."""
    w0, b0 = weights[PREFIX + "0.weight"], weights[PREFIX + "0.bias"]
    w1, b1 = weights[PREFIX + "2.weight"], weights[PREFIX + "2.bias"]
    hidden = np.maximum(np.asarray(x, np.float32) @ w0.T + b0, 0.0)
    out: np.ndarray = hidden @ w1.T + b1
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    out: np.ndarray = z / z.sum(axis=-1, keepdims=True)
    return out


@dataclass(frozen=True)
class Selection:
    """What the router chose for one query (member indices)."""

    primary: int
    peers: tuple[int, ...]
    probs: tuple[float, ...]
    """softmax of the scores over all members."""
    peer_weights: tuple[float, ...]
    """softmax of the peers' scores over the peers (sums to 1; empty without peers)."""

    @property
    def experts(self) -> tuple[int, ...]:
        return (self.primary, *self.peers)

    def log_weights(self, members: int) -> np.ndarray:
        """Per member: log of its peer weight, ``-inf`` for the primary and unselected ones."""
        out = np.full(members, -np.inf, dtype=np.float32)
        for e, w in zip(self.peers, self.peer_weights, strict=True):
            out[e] = np.log(max(w, 1e-30))
        return out


def select(logits: np.ndarray, leaders: Sequence[int], k: int) -> Selection:
    """Top-``k`` members for one query's scores; the best leader is the primary."""
    if not leaders:
        raise ValueError("no member can lead (every member is an encoder)")
    scores = np.asarray(logits, dtype=np.float64)
    primary = max(leaders, key=lambda e: (scores[e], -e))
    rest = sorted((e for e in range(len(scores)) if e != primary), key=lambda e: (-scores[e], e))
    peers = tuple(rest[: max(0, k - 1)])
    weights = softmax(scores[list(peers)]) if peers else np.zeros(0)
    return Selection(
        primary=int(primary),
        peers=tuple(int(e) for e in peers),
        probs=tuple(float(p) for p in softmax(scores)),
        peer_weights=tuple(float(w) for w in weights),
    )
