"""Training a Mixture of Thoughts: the text set, cached frozen states, the joint objective.

**Text set** (:func:`build_texts`): from a :class:`RoutingDataset`, one (question, answer) pair
per prompt with a reference answer (LLMRouter's ground truth, MMLU-Pro's letter) or, failing
that, a recorded response (RouterBench). The question keeps its last ``max_prompt_chars``
characters, the answer its first ``max_answer_chars``, so every leader scores the *same answer
string*; only an answer that was not cut ends with the end-of-turn token. :func:`split_texts`
holds out ``valid_fraction`` of the pairs by a hash of the question (identical questions never
straddle the split).

**Caching** (frozen experts need no gradients): every member reads every prompt once. Kept per
pair: each member's prompt states at the interaction depths (what peers contribute), each
leader's state at its first interaction depth over prompt + answer (where the trainable part of
the primary's forward starts), and each leader's standalone answer NLL.

**Objective** per batch (the router is first warmed up on the ranking term alone)::

    L = LM(primary with interaction)  +  rank_weight · CE(softmax(−nll/τ), router over leaders)
        + balance_weight · M · Σ_e f_e · P_e

* LM — mean NLL of the answer tokens of the router's chosen primary, with the interaction; it
  reaches the router through the peers' attention log-weights;
* ranking — the router's distribution over leaders is pulled toward the softmax of the leaders'
  negative standalone NLL per answer character (a loss-ranking target: the member that would
  answer best alone should lead);
* balance — Switch-Transformer load balancing (``f_e`` share of selections, ``P_e`` mean router
  probability) against collapse onto one member.

The primary's forward in training starts from its cached state at the first interaction depth
(the interaction applied there directly), then runs a weight-sharing view of the layers above
with hooks — the same arithmetic as the full forward at inference, without recomputing the
frozen layers below (a unit test checks both agree).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from orchestrator.evaluation.datasets import RoutingDataset, hash_unit, normalize_prompt
from routers.embeddings import routing_text
from routers.mot.members import Member, layer_view, load_member
from routers.mot.model import MoTNetwork, PeerStates, interacting
from routers.mot.options import MoTOptions
from routers.mot.router import select

Progress = Callable[[str, int, int], None]
"""``(phase, done, total)`` — called as caching and training advance."""


@dataclass(frozen=True)
class TextPair:
    prompt: str
    answer: str
    category: str
    complete: bool = True
    """False when the answer was cut: its turn then has no end-of-turn token."""

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]


def _head(text: str, n: int) -> str:
    if len(text) <= n:
        return text
    cut = text[:n]
    space = cut.rfind(" ")
    return cut[:space] if space > n // 2 else cut


def build_texts(
    data: RoutingDataset, max_prompt_chars: int, max_answer_chars: int
) -> list[TextPair]:
    """(question tail, answer head) pairs for the prompts with an answer text."""
    out = []
    for i, prompt in enumerate(data.prompts):
        answer = data.answers[i] if data.answers is not None else None
        if not answer and data.responses is not None:
            answer = next((r for j in range(len(data.models)) if (r := data.response(i, j))), None)
        if not answer or not answer.strip() or not prompt.strip():
            continue
        question = routing_text(prompt.strip(), max_prompt_chars)
        full = answer.strip()
        head = _head(full, max_answer_chars)
        out.append(TextPair(question, head, data.categories[i], complete=head == full))
    return out


def split_texts(
    pairs: Sequence[TextPair], valid_fraction: float, seed: int, limit: int | None = None
) -> tuple[list[TextPair], list[TextPair]]:
    """(train, held-out) by a hash of the normalised question; ``limit`` keeps that many pairs
    first (also by hash), so a small run is a stable sample of the whole set."""
    chosen = list(pairs)
    if limit is not None and len(chosen) > limit:
        order = sorted(chosen, key=lambda p: hash_unit(normalize_prompt(p.prompt), f"mot:{seed}"))
        chosen = order[:limit]
    held = [
        hash_unit(normalize_prompt(p.prompt), f"mot-valid:{seed}") < valid_fraction for p in chosen
    ]
    return [p for p, h in zip(chosen, held, strict=True) if not h], [
        p for p, h in zip(chosen, held, strict=True) if h
    ]


# -- cached frozen states -------------------------------------------------------------------------


@dataclass
class Cache:
    """Frozen members' contributions for a list of pairs (see the module docstring)."""

    members: list[Member]
    fractions: list[float]
    embeddings: torch.Tensor  # [N, D]
    answer_chars: torch.Tensor  # [N]
    peer: list[list[list[torch.Tensor]]]  # [member][pair][depth] -> [T_e, h_e]
    first: dict[int, list[torch.Tensor]]  # leader -> [pair] -> [T_full, h] at its first depth
    answer_span: dict[int, list[tuple[int, list[int]]]]  # leader -> [pair] -> (start, answer ids)
    nll: torch.Tensor  # [N, M] standalone answer NLL (sum), nan for encoders

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


def lm_logits(member: Member, h: torch.Tensor) -> torch.Tensor:
    """The member's next-token logits from its last layer's output."""
    out: torch.Tensor = member.model.lm_head(member.model.model.norm(h))
    return out


def build_cache(
    members: Sequence[Member],
    pairs: Sequence[TextPair],
    embeddings: np.ndarray,
    fractions: Sequence[float],
    max_peer_tokens: int,
    progress: Progress | None = None,
    batch: int = 8,
) -> Cache:
    n, m = len(pairs), len(members)
    peer: list[list[list[torch.Tensor]]] = [[] for _ in members]
    first: dict[int, list[torch.Tensor]] = {}
    spans: dict[int, list[tuple[int, list[int]]]] = {}
    nll = torch.full((n, m), math.nan)
    done = 0
    for e, member in enumerate(members):
        depths = [member.depth_index(f) for f in fractions]
        if member.generative:
            first[e], spans[e] = [], []
        for start in range(0, n, batch):
            chunk = pairs[start : start + batch]
            prompts = [
                member.prompt_ids(p.messages, max_peer_tokens if not member.generative else None)
                for p in chunk
            ]
            if member.generative:
                answers = [member.answer_ids(p.messages, p.answer, p.complete) for p in chunk]
                seqs = [a + b for a, b in zip(prompts, answers, strict=True)]
                wanted = sorted({*depths, member.num_layers - 1})
            else:
                answers, seqs, wanted = [], prompts, depths
            width = max(len(s) for s in seqs)
            pad = member.tokenizer.pad_token_id or 0
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
            states = dict(zip(wanted, member.states(ids, wanted, mask), strict=True))
            for b, s in enumerate(seqs):
                plen = min(len(prompts[b]), max_peer_tokens)
                lo = len(prompts[b]) - plen
                peer[e].append([states[d][b, lo : len(prompts[b])].clone() for d in depths])
                if member.generative:
                    first[e].append(states[depths[0]][b, : len(s)].clone())
                    spans[e].append((len(prompts[b]), answers[b]))
                    with torch.no_grad():
                        logits = lm_logits(
                            member, states[member.num_layers - 1][b : b + 1, : len(s)]
                        )
                    target = torch.tensor(answers[b])
                    pred = logits[0, len(prompts[b]) - 1 : len(s) - 1]
                    nll[start + b, e] = torch.nn.functional.cross_entropy(
                        pred, target, reduction="sum"
                    )
            done += len(chunk)
            if progress is not None:
                progress("caching frozen experts", done, n * m)
    return Cache(
        members=list(members),
        fractions=list(fractions),
        embeddings=torch.from_numpy(np.asarray(embeddings, np.float32)),
        answer_chars=torch.tensor(
            [len(p.answer) + int(p.complete) for p in pairs], dtype=torch.float32
        ),
        peer=peer,
        first=first,
        answer_span=spans,
        nll=nll,
    )


# -- the forward used in training and evaluation -------------------------------------------------


def _pad(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(int(s.shape[0]) for s in seqs)
    out = torch.zeros(len(seqs), width, seqs[0].shape[-1])
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    return out, mask


def peer_log_weights(logits: torch.Tensor, peers: Sequence[Sequence[int]]) -> torch.Tensor:
    """[B, M]: log-softmax of the logits over each row's peers, ``-inf`` elsewhere."""
    allowed = torch.zeros_like(logits, dtype=torch.bool)
    for b, row in enumerate(peers):
        allowed[b, list(row)] = True
    masked = logits.masked_fill(~allowed, -math.inf)
    norm = torch.logsumexp(masked, dim=1, keepdim=True)
    norm = torch.where(torch.isfinite(norm), norm, torch.zeros_like(norm))
    return masked - norm


class ViewCache:
    """Weight-sharing views of each leader above its first interaction depth (built once)."""

    def __init__(self, members: Sequence[Member], fractions: Sequence[float]) -> None:
        self.views: dict[int, tuple[Any, int]] = {}
        for e, m in enumerate(members):
            if m.generative:
                start = m.depth_index(fractions[0]) + 1
                self.views[e] = (layer_view(m.model, start, m.num_layers), start)


def answer_nll(
    net: MoTNetwork,
    cache: Cache,
    views: ViewCache,
    rows: Sequence[int],
    primary: int,
    peers: Sequence[Sequence[int]],
    log_weights: torch.Tensor,
    *,
    peer_rows: Sequence[int] | None = None,
    interact: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row summed answer NLL [B], per-row answer token counts [B]) of ``primary`` on
    cached ``rows``, with the interaction over ``peers`` (``peer_rows``: take the peers' states
    from other rows — the shuffled-peers ablation)."""
    member = cache.members[primary]
    x, _ = _pad([cache.first[primary][r] for r in rows])
    source_rows = list(peer_rows) if peer_rows is not None else list(rows)
    states: dict[int, list[torch.Tensor]] = {}
    masks: dict[int, torch.Tensor] = {}
    for e in range(len(cache.members)):
        if e == primary or not any(e in row for row in peers):
            continue
        per_depth = []
        for q in range(len(cache.fractions)):
            padded, mask = _pad([cache.peer[e][r][q] for r in source_rows])
            per_depth.append(padded)
        states[e], masks[e] = per_depth, mask
    view, start = views.views[primary]
    memories = []
    if interact and states:
        memories = [
            layer.memory([PeerStates(e, states[e][q], masks[e]) for e in states], log_weights)  # type: ignore[operator]
            for q, layer in enumerate(net.interactions)
        ]
        x = net.interactions[0](primary, x, memories[0])
    with interacting(net, primary, member, memories, blocks=list(view.model.layers), offset=start):
        hidden = view.model(inputs_embeds=x, use_cache=False).last_hidden_state
    totals, counts = [], []
    for b, r in enumerate(rows):
        begin, answer = cache.answer_span[primary][r]
        pred = member.model.lm_head(hidden[b, begin - 1 : begin - 1 + len(answer)])
        totals.append(
            torch.nn.functional.cross_entropy(pred, torch.tensor(answer), reduction="sum")
        )
        counts.append(len(answer))
    return torch.stack(totals), torch.tensor(counts, dtype=torch.float32)


# -- training -------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    net: MoTNetwork
    members: list[Member]
    leaders: list[int]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def _rank_loss(
    logits: torch.Tensor, nll_char: torch.Tensor, leaders: list[int], tau: float
) -> torch.Tensor:
    target = torch.softmax(-nll_char[:, leaders] / tau, dim=1)
    return -(target * torch.log_softmax(logits[:, leaders], dim=1)).sum(1).mean()


def _selections(
    logits: torch.Tensor, leaders: list[int], k: int
) -> list[tuple[int, tuple[int, ...]]]:
    out = []
    for row in logits.detach().numpy():
        s = select(row, leaders, k)
        out.append((s.primary, s.peers))
    return out


def train_network(
    members: Sequence[Member],
    cache: Cache,
    options: MoTOptions,
    progress: Progress | None = None,
) -> TrainResult:
    """Warm up the router on the ranking term, then optimise the joint objective."""
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    leaders = [i for i, m in enumerate(members) if m.generative]
    net = MoTNetwork(
        [m.hidden_size for m in members],
        latent=options.latent,
        heads=options.heads,
        num_interactions=options.interactions,
        embed_dim=int(cache.embeddings.shape[1]),
        router_hidden=options.router_hidden,
    )
    views = ViewCache(members, net.fractions)
    nll_char = cache.nll / cache.answer_chars[:, None]
    started = time.perf_counter()
    history: list[dict[str, float]] = []

    router_opt = torch.optim.AdamW(net.router.parameters(), lr=options.router_lr, weight_decay=1e-4)
    for step in range(options.warmup_steps):
        router_opt.zero_grad()
        loss = _rank_loss(net.router(cache.embeddings), nll_char, leaders, options.rank_temperature)
        loss.backward()  # type: ignore[no-untyped-call]
        router_opt.step()
        if progress is not None and (step + 1) % 50 == 0:
            progress("router warm-up", step + 1, options.warmup_steps)

    gates = [p for n, p in net.named_parameters() if n.endswith(".gate")]
    router_params = list(net.router.parameters())
    rest = [
        p
        for n, p in net.named_parameters()
        if not n.endswith(".gate") and not n.startswith("router.")
    ]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": options.lr},
            {"params": gates, "lr": options.gate_lr, "weight_decay": 0.0},
            {"params": router_params, "lr": options.router_lr},
        ],
        weight_decay=1e-4,
    )
    m = len(members)
    for step in range(options.steps):
        rows = rng.choice(
            len(cache), size=min(options.batch_size, len(cache)), replace=False
        ).tolist()
        opt.zero_grad()
        logits = net.router(cache.embeddings[rows])
        chosen = _selections(logits, leaders, options.k)
        log_w = peer_log_weights(logits, [c[1] for c in chosen])
        total = torch.zeros(())
        tokens = 0.0
        for p in sorted({c[0] for c in chosen}):
            idx = [b for b, c in enumerate(chosen) if c[0] == p]
            nll, count = answer_nll(
                net,
                cache,
                views,
                [rows[b] for b in idx],
                p,
                [chosen[b][1] for b in idx],
                log_w[idx],
            )
            total = total + nll.sum()
            tokens += float(count.sum())
        lm = total / max(tokens, 1.0)
        rank = _rank_loss(logits, nll_char[rows], leaders, options.rank_temperature)
        probs = torch.softmax(logits, dim=1)
        used = torch.zeros(m)
        for p, peers in chosen:
            used[[p, *peers]] += 1.0 / len(chosen)
        balance = m * (used * probs.mean(0)).sum()
        loss = lm + options.rank_weight * rank + options.balance_weight * balance
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        history.append(
            {
                "step": step + 1,
                "lm": float(lm.detach()),
                "rank": float(rank.detach()),
                "loss": float(loss.detach()),
            }
        )
        if progress is not None:
            progress("training interaction + router", step + 1, options.steps)
    return TrainResult(net, list(members), leaders, history, time.perf_counter() - started)


# -- evaluation -----------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    net: MoTNetwork, cache: Cache, k: int, categories: Sequence[str] | None = None, batch: int = 8
) -> dict[str, Any]:
    """Held-out answer NLL of the MoT vs the same primary alone (and baselines), with the
    router's selection distribution.

    NLL is reported in nats per answer character (sum over answers / their characters, an
    end of turn counted as one), comparable across members with different tokenizers; per
    primary, also in nats per token of that primary.
    """
    members = cache.members
    leaders = [i for i, m in enumerate(members) if m.generative]
    views = ViewCache(members, net.fractions)
    logits = net.router(cache.embeddings)
    chosen = _selections(logits, leaders, k)
    log_w = peer_log_weights(logits, [c[1] for c in chosen])
    n = len(cache)
    mot = torch.zeros(n)
    shuffled = torch.zeros(n)
    tokens = torch.zeros(n)
    for p in sorted({c[0] for c in chosen}):
        rows = [r for r in range(n) if chosen[r][0] == p]
        for s in range(0, len(rows), batch):
            part = rows[s : s + batch]
            peers = [chosen[r][1] for r in part]
            nll, count = answer_nll(net, cache, views, part, p, peers, log_w[part])
            mot[part], tokens[part] = nll, count
            other = [(r + 1 + n // 2) % n for r in part]  # another pair's peers
            nll_s, _ = answer_nll(net, cache, views, part, p, peers, log_w[part], peer_rows=other)
            shuffled[part] = nll_s
    primary = torch.tensor([c[0] for c in chosen])
    alone = cache.nll[torch.arange(n), primary]
    chars = float(cache.answer_chars.sum())
    per_member = {members[e].spec: float(cache.nll[:, e].sum()) / chars for e in leaders}
    best_single = min(per_member, key=lambda s: per_member[s])
    oracle = torch.stack([cache.nll[:, e] for e in leaders], 1).min(1).values
    by_primary = {}
    for e in leaders:
        rows_e = (primary == e).nonzero().flatten()
        if len(rows_e):
            t = float(tokens[rows_e].sum())
            by_primary[members[e].spec] = {
                "pairs": len(rows_e),
                "alone_nats_per_token": float(alone[rows_e].sum()) / t,
                "mot_nats_per_token": float(mot[rows_e].sum()) / t,
            }
    selections: dict[str, Any] = {
        "primary": dict(Counter(members[c[0]].spec for c in chosen)),
        "peers": dict(Counter(members[e].spec for c in chosen for e in c[1])),
        "sets": dict(
            Counter(
                " + ".join([members[c[0]].spec, *(members[e].spec for e in c[1])]) for c in chosen
            )
        ),
    }
    if categories is not None:
        per_cat: dict[str, Counter[str]] = {}
        for c, cat in zip(chosen, categories, strict=True):
            per_cat.setdefault(cat, Counter())[members[c[0]].spec] += 1
        selections["primary_by_category"] = {k: dict(v) for k, v in sorted(per_cat.items())}
    return {
        "pairs": n,
        "nats_per_char": {
            "primary_alone": float(alone.sum()) / chars,
            "mot": float(mot.sum()) / chars,
            "mot_shuffled_peers": float(shuffled.sum()) / chars,
            "best_single_member": per_member[best_single],
            "oracle_single_member": float(oracle.sum()) / chars,
        },
        "best_single_member": best_single,
        "single_members": per_member,
        "by_primary": by_primary,
        "selections": selections,
    }


# -- fit: what `orchestrator train mot` runs ----------------------------------------------------


def fit_mot(
    data: RoutingDataset,
    options: MoTOptions,
    progress: Progress | None = None,
    members: Sequence[Member] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train on ``data`` (its own held-out split carved inside): (state, metrics)."""
    from routers.trainable import embed

    if options.threads is not None:
        torch.set_num_threads(options.threads)
    pairs = build_texts(data, options.max_prompt_chars, options.max_answer_chars)
    train, held = split_texts(pairs, options.valid_fraction, options.seed, options.max_pairs)
    if len(train) < 2 or not held:
        raise ValueError(
            f"{data.name}: {len(pairs)} prompts with answer texts give {len(train)} training and "
            f"{len(held)} held-out pairs; MoT training needs answers (and more of them)"
        )
    loaded = list(members) if members is not None else [load_member(s) for s in options.members]
    if not any(m.generative for m in loaded):
        raise ValueError("MoT needs at least one causal-LM member to lead")
    fr = [(q + 1) / options.interactions for q in range(options.interactions)]
    emb_train = embed([p.prompt for p in train], options.embedding_model)
    emb_held = embed([p.prompt for p in held], options.embedding_model)
    train_cache = build_cache(loaded, train, emb_train, fr, options.max_peer_tokens, progress)
    held_cache = build_cache(loaded, held, emb_held, fr, options.max_peer_tokens, progress)
    result = train_network(loaded, train_cache, options, progress)
    result.net.eval()
    report = evaluate(result.net, held_cache, options.k, [p.category for p in held])
    hist = result.history
    metrics = {
        "train_pairs": len(train),
        "held_out_pairs": len(held),
        "train_seconds": round(result.seconds, 1),
        "train_lm_first": hist[0]["lm"] if hist else None,
        "train_lm_last_10": float(np.mean([h["lm"] for h in hist[-10:]])) if hist else None,
        "held_out": report,
    }
    state = export_state(result.net, loaded, options)
    return state, metrics


def export_state(net: MoTNetwork, members: Sequence[Member], options: MoTOptions) -> dict[str, Any]:
    return {
        "kind": "mot",
        "models": [m.spec for m in members],
        "members": [m.spec for m in members],
        "fingerprints": [m.fingerprint for m in members],
        "hidden_sizes": [m.hidden_size for m in members],
        "generative": [m.generative for m in members],
        "depths": {m.spec: [m.depth_index(f) for f in net.fractions] for m in members},
        "latent": options.latent,
        "heads": options.heads,
        "interactions": options.interactions,
        "embed_dim": int(net.router.net[0].in_features),  # type: ignore[index,arg-type]
        "router_hidden": options.router_hidden,
        "k": options.k,
        "max_peer_tokens": options.max_peer_tokens,
        "embedding_model": options.embedding_model,
        "network": net.export(),
    }
