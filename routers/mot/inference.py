"""Single-pass MoT generation: route, prefill every selected member, decode the primary.

Order for one request (:meth:`MoTModel.stream`):

1. **Route** — the router scores the members from the query's MiniLM embedding and
   :func:`routers.mot.router.select` picks the primary and the ``k − 1`` peers.
2. **Prefill peers** — each peer reads the prompt in its own tokens once; its hidden states at
   the interaction depths are projected into the latent space and turned into keys/values
   (:class:`routers.mot.model.Memory`), kept for the whole generation.
3. **Prefill and decode the primary** — with the interaction hooks on its layers: the prompt in
   one forward, then one token per step with its KV cache; at every step the new position's
   states cross-attend over the cached peer memories. Peers never run again.

``interact=False`` runs the same loop without peers or hooks: the primary alone, for
comparisons (``bench/mot.py``). Generation is greedy at temperature 0, else temperature and
top-p sampling with a seeded generator. Stop strings end generation where they first appear;
text that could begin one is held back from the stream until the next tokens decide.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from orchestrator.errors import ConfigError, ContextWindowError
from orchestrator.types import SamplingParams
from routers.embeddings import get_embedder
from routers.mot.members import BaseLoader, Member, Messages, check_fingerprints, load_member
from routers.mot.model import Memory, MoTNetwork, PeerStates, interacting
from routers.mot.router import Selection, router_logits, select


@dataclass(frozen=True)
class Step:
    """One decoded token's text (possibly empty while a character is incomplete), or the end:
    ``finish`` ('stop' or 'length') with token counts."""

    text: str
    finish: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def network_from_state(state: dict[str, Any]) -> MoTNetwork:
    net = MoTNetwork(
        state["hidden_sizes"],
        latent=int(state["latent"]),
        heads=int(state["heads"]),
        num_interactions=int(state["interactions"]),
        embed_dim=int(state["embed_dim"]),
        router_hidden=int(state["router_hidden"]),
    )
    net.load(state["network"])
    return net.eval()


class MoTModel:
    """A loaded MoT: frozen members, the trained network, and a lock (one generation at a
    time; the hooks live on the primary's modules while it decodes)."""

    def __init__(self, state: dict[str, Any], members: Sequence[Member]) -> None:
        self.state = state
        self.members = list(members)
        self.net = network_from_state(state)
        self.leaders = [i for i, m in enumerate(self.members) if m.generative]
        self.k = int(state["k"])
        self.max_peer_tokens = int(state.get("max_peer_tokens", 256))
        self.embedding_model: str | None = state.get("embedding_model")
        self.lock = threading.Lock()

    @classmethod
    def from_state(cls, state: dict[str, Any], base: BaseLoader | None = None) -> MoTModel:
        members = [load_member(spec, base) for spec in state["members"]]
        check_fingerprints(members, state["fingerprints"])
        return cls(state, members)

    @property
    def names(self) -> list[str]:
        return [m.spec for m in self.members]

    # -- routing --------------------------------------------------------------------------------

    def route_embeddings(self, embeddings: np.ndarray) -> list[Selection]:
        logits = router_logits(self.state["network"], embeddings)
        return [select(row, self.leaders, self.k) for row in logits]

    def route(self, text: str) -> Selection:
        (embedding,) = get_embedder(self.embedding_model).encode([text])
        return self.route_embeddings(embedding[None, :])[0]

    # -- generation -----------------------------------------------------------------------------

    def memories(self, selection: Selection, messages: Messages) -> tuple[list[Memory], int]:
        """Prefill the peers: their memories at every depth, and how many tokens they read."""
        states: dict[int, list[torch.Tensor]] = {}
        masks: dict[int, torch.Tensor] = {}
        read = 0
        for e in selection.peers:
            m = self.members[e]
            ids = m.prompt_ids(messages, self.max_peer_tokens)
            read += len(ids)
            indices = [m.depth_index(f) for f in self.net.fractions]
            states[e] = m.states(torch.tensor([ids]), indices)
            masks[e] = torch.ones(1, len(ids), dtype=torch.bool)
        log_w = torch.from_numpy(selection.log_weights(len(self.members)))[None, :]
        memories = [
            layer.memory([PeerStates(e, states[e][q], masks[e]) for e in states], log_w)  # type: ignore[operator]
            for q, layer in enumerate(self.net.interactions)
        ]
        return memories, read

    def stream(
        self,
        messages: Messages,
        sampling: SamplingParams,
        *,
        selection: Selection | None = None,
        interact: bool = True,
        max_input_tokens: int = 2048,
    ) -> Iterator[Step]:
        """Generate for ``messages``: text steps, then a final step with ``finish``.

        Holds :attr:`lock` until exhausted or closed; consume it in one thread.
        """
        if selection is None:
            users = [m["content"] for m in messages if m["role"] == "user"]
            selection = self.route(users[-1] if users else "")
        primary = self.members[selection.primary]
        ids = primary.prompt_ids(messages)
        if len(ids) > max_input_tokens:
            raise ContextWindowError(
                f"the prompt has {len(ids)} tokens for MoT primary '{primary.spec}'; "
                f"at most {max_input_tokens} are accepted"
            )
        stops = primary.stop_ids()
        generator = torch.Generator().manual_seed(
            sampling.seed if sampling.seed is not None else int(np.random.randint(2**31))
        )
        with self.lock, torch.inference_mode():
            memories, read = (
                self.memories(selection, messages) if interact and selection.peers else ([], 0)
            )
            with interacting(self.net, selection.primary, primary, memories):
                out = primary.model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
                generated: list[int] = []
                emitted = ""
                finish = "length"
                stopped_by_string = False
                for _ in range(sampling.max_tokens):
                    token = _next_token(out.logits[0, -1], sampling, generator)
                    if token in stops:
                        finish = "stop"
                        break
                    generated.append(token)
                    text = primary.tokenizer.decode(generated, skip_special_tokens=True)
                    cut = _stop_at(text, sampling.stop)
                    if cut is not None:
                        finish, stopped_by_string, text = "stop", True, cut
                        break
                    safe = _safe_prefix(text, sampling.stop)
                    if len(safe) > len(emitted):
                        yield Step(safe[len(emitted) :])
                        emitted = safe
                    out = primary.model(
                        input_ids=torch.tensor([[token]]),
                        past_key_values=out.past_key_values,
                        use_cache=True,
                    )
        if not stopped_by_string:
            text = primary.tokenizer.decode(generated, skip_special_tokens=True)
        if len(text) > len(emitted):
            yield Step(text[len(emitted) :])
        # an end-of-turn token counts as generated; a stop string ends on a generated token
        completion = len(generated) + (1 if finish == "stop" and not stopped_by_string else 0)
        yield Step("", finish, len(ids) + read, completion)


def _stop_at(text: str, stops: Sequence[str]) -> str | None:
    """``text`` cut before the first stop string in it, or None when there is none."""
    positions = [i for s in stops if s and (i := text.find(s)) >= 0]
    return text[: min(positions)] if positions else None


def _safe_prefix(text: str, stops: Sequence[str]) -> str:
    """What may be emitted now: no incomplete character at the end, and no tail that could be
    the start of a stop string (it is held back until the next tokens decide)."""
    text = text.rstrip("\ufffd")
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold]


def _next_token(logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator) -> int:
    if sampling.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def require_state(state: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` unless ``state`` is a MoT artifact's state."""
    if state.get("kind") != "mot":
        raise ConfigError("the artifact is not a Mixture-of-Thoughts artifact (kind != 'mot')")
