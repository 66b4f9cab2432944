"""The trainable part of a Mixture of Thoughts: interaction layers (and the router's weights).

One :class:`InteractionLayer` per interaction depth ``q`` (``Q`` of them, at fractions
``q/Q`` of every member's depth, so the last one sits on the top layer). For member ``e`` of
hidden size ``h_e`` it holds:

* ``down[e]`` — LayerNorm(h_e) then Linear(h_e → d): into the shared latent space (members'
  residual streams differ in scale, hence the norm);
* ``up[e]`` — Linear(d → h_e): back into e's residual stream when e is the primary;
* ``gate[e]`` — a scalar, initialised at 0, applied as ``tanh(gate)``.

and, shared by all members at that depth, multi-head cross-attention projections
``q/k/v/o`` (d → d). With primary ``p`` and selected peers ``P``, the primary's hidden states
``h`` after its layer at depth q become::

    h + tanh(gate[p]) · up[p](o(attn(q(down[p](h)), k(down[P](s_P)), v(down[P](s_P)), bias)))

where ``s_P`` are the peers' hidden states over the *prompt* at the proportionally matching
depth, and ``bias`` adds ``log w_e`` to the attention logits of peer e's tokens (``w`` = the
router's weights renormalised over the selected peers), so the language-modelling loss reaches
the router (a peer the router trusts more gets more attention). At initialisation the gate is
0, so the primary's output is exactly what it is alone.

The interaction is applied by forward hooks on the primary's decoder layers
(:func:`interacting`); peers' latents are computed once per prompt (:class:`Memory`) and reused
at every decoding step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from routers.mot.members import Member


def fractions(num_interactions: int) -> list[float]:
    """Uniformly spaced interaction depths, as fractions of each member's depth."""
    return [(q + 1) / num_interactions for q in range(num_interactions)]


@dataclass
class PeerStates:
    """One peer's prompt states at one depth: ``states`` [B, T, h_e], ``mask`` [B, T] (True =
    a real token)."""

    member: int
    states: torch.Tensor
    mask: torch.Tensor


@dataclass
class Memory:
    """Peers' keys and values at one interaction depth, ready for the primary's queries."""

    k: torch.Tensor  # [B, H, S, dh]
    v: torch.Tensor  # [B, H, S, dh]
    bias: torch.Tensor  # [B, 1, 1, S]
    active: torch.Tensor  # [B] — samples with at least one attended peer token


class InteractionLayer(nn.Module):
    def __init__(self, hidden_sizes: Sequence[int], latent: int, heads: int) -> None:
        super().__init__()
        if latent % heads:
            raise ValueError(f"latent size {latent} is not divisible by {heads} heads")
        self.heads = heads
        self.latent = latent
        self.down = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(h), nn.Linear(h, latent)) for h in hidden_sizes
        )
        self.up = nn.ModuleList(nn.Linear(latent, h) for h in hidden_sizes)
        self.gate = nn.Parameter(torch.zeros(len(hidden_sizes)))
        self.q = nn.Linear(latent, latent)
        self.k = nn.Linear(latent, latent)
        self.v = nn.Linear(latent, latent)
        self.o = nn.Linear(latent, latent)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.latent // self.heads).transpose(1, 2)

    def memory(self, peers: Sequence[PeerStates], log_weights: torch.Tensor) -> Memory:
        """Keys/values over the peers' tokens. ``log_weights`` [B, M] holds each member's log
        weight per sample (``-inf`` = not an attended peer for that sample)."""
        keys, values, biases = [], [], []
        for p in peers:
            z = self.down[p.member](p.states)
            keys.append(self._heads(self.k(z)))
            values.append(self._heads(self.v(z)))
            w = log_weights[:, p.member : p.member + 1].expand(-1, p.mask.shape[1])
            biases.append(torch.where(p.mask, w, torch.full_like(w, -math.inf)))
        bias = torch.cat(biases, dim=1)
        active = torch.isfinite(bias).any(dim=1)
        bias = torch.where(active[:, None], bias, torch.zeros_like(bias))
        return Memory(torch.cat(keys, 2), torch.cat(values, 2), bias[:, None, None, :], active)

    def forward(self, primary: int, h: torch.Tensor, memory: Memory) -> torch.Tensor:
        q = self._heads(self.q(self.down[primary](h)))
        attn = torch.nn.functional.scaled_dot_product_attention(
            q, memory.k, memory.v, attn_mask=memory.bias.to(q.dtype)
        )
        b, _, t, _ = attn.shape
        out = self.up[primary](self.o(attn.transpose(1, 2).reshape(b, t, self.latent)))
        out = out * memory.active[:, None, None].to(out.dtype)
        mixed: torch.Tensor = h + torch.tanh(self.gate[primary]) * out
        return mixed


class RouterNet(nn.Module):
    """Query embedding → one score per member (a two-layer MLP)."""

    def __init__(self, embed_dim: int, hidden: int, members: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, members)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class MoTNetwork(nn.Module):
    """Everything an artifact stores: the router and the ``Q`` interaction layers."""

    def __init__(
        self,
        hidden_sizes: Sequence[int],
        *,
        latent: int,
        heads: int,
        num_interactions: int,
        embed_dim: int,
        router_hidden: int,
    ) -> None:
        super().__init__()
        self.hidden_sizes = list(hidden_sizes)
        self.fractions = fractions(num_interactions)
        self.interactions = nn.ModuleList(
            InteractionLayer(hidden_sizes, latent, heads) for _ in range(num_interactions)
        )
        self.router = RouterNet(embed_dim, router_hidden, len(hidden_sizes))

    def memories(
        self,
        members: Sequence[Member],
        peer_states: dict[int, list[torch.Tensor]],
        peer_masks: dict[int, torch.Tensor],
        log_weights: torch.Tensor,
    ) -> list[Memory]:
        """One :class:`Memory` per depth from ``peer_states[e][q]`` ([B, T, h_e])."""
        out = []
        for q, layer in enumerate(self.interactions):
            peers = [PeerStates(e, s[q], peer_masks[e]) for e, s in peer_states.items()]
            out.append(layer.memory(peers, log_weights))  # type: ignore[operator]
        return out

    def export(self) -> dict[str, np.ndarray]:
        """The weights as numpy arrays (what the artifact's state holds)."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.state_dict().items()}

    def load(self, weights: dict[str, np.ndarray]) -> None:
        self.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})


@contextmanager
def interacting(
    net: MoTNetwork,
    primary: int,
    member: Member,
    memories: Sequence[Memory],
    *,
    blocks: Sequence[Any] | None = None,
    offset: int = 0,
) -> Iterator[None]:
    """Hooks on ``member``'s layers at every interaction depth, applying the interaction to
    their outputs while the context is open.

    ``blocks``/``offset``: when the primary runs as a view starting at layer ``offset``
    (training from a cached state), hooks go on ``blocks[depth - offset]``; depths below the
    view's start are skipped (the caller applied them to the cached state).
    """
    layers = list(blocks) if blocks is not None else member.blocks()
    handles = []
    for q, memory in enumerate(memories):
        index = member.depth_index(net.fractions[q]) - offset
        if index < 0:
            continue
        layer = net.interactions[q]

        def hook(_m: Any, _a: Any, out: Any, layer: Any = layer, memory: Memory = memory) -> Any:
            if isinstance(out, tuple):
                return (layer(primary, out[0], memory), *out[1:])
            return layer(primary, out, memory)

        handles.append(layers[index].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
