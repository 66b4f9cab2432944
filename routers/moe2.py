"""``moe2``: Mixture-of-Edge-Experts — joint gating and expert selection under budgets.

After MoE² (Jin et al., 2025, "Optimizing Collaborative Inference for Edge Large Language
Models"), in two levels:

1. **Gating network, trained once over all experts.** A small MLP over the query's MiniLM
   embedding (384 → ``hidden`` ReLU → three heads), trained with torch on recorded outcomes:

   * the *gate* head gives softmax weights ``w(x)`` over every recorded model, trained with the
     mixture likelihood of MoE (``−log Σ_i w_i(x) · s̃_i``, where ``s̃_i`` is model i's recorded
     score smoothed into (0, 1): the probability that the mixture's answer is right);
   * the *quality* head gives ``q_i(x)``, each model's probability of answering correctly
     (sigmoid, binary cross-entropy on the recorded scores);
   * the *cost* head predicts each model's USD cost for this prompt (log cost, standardised
     per model, squared error): recorded costs depend on the task (few-shot prompts, long
     code answers), not only on prompt length.

   Epochs are chosen by early stopping on a validation part carved from the training split
   (by prompt hash), then the net is refitted on the whole split for that many epochs. The
   weights are exported to numpy: serving needs no torch.

   *Optimality preservation*: the gate is trained once over the full pool, and any subset
   reuses it restricted — its softmax renormalised over the members (the paper's property
   that lets training and selection decouple). Here the subset is the set of experts the
   pool actually serves, and the value of expert i is ``v_i = q_i · w_i / max_j w_j`` (the
   gate's relative trust times its predicted quality; ``value: quality`` uses ``q_i`` alone).
   ``value: auto`` (the default) picks whichever gives the better mean accuracy on the
   validation part over the cost-budget grid; on RouterBench that is ``quality`` (the gate's
   weights concentrate on GPT-4, and discounting the others by them led to pricier, worse
   picks under mid budgets).

2. **Subset selection under budgets** (:mod:`routers.subset_search`): the subset S
   maximising ``Q(S) = 1 − Π_{i∈S}(1 − v_i)`` subject to the latency budget (members run in
   parallel: the slowest member's ``ttft_ms + ms_per_output_token × tokens``, plus an
   aggregator expert's own latency when two or more answers are synthesised), the energy
   budget (Σ ``energy_j_per_token × tokens``) and the cost budget (Σ USD), and
   ``|S| ≤ max_experts``, found exactly by branch and bound.

**Combination.** ``Decision.experts`` are the members by value, best first. With
``aggregator: first`` the highest-value member's answer is returned; ``vote`` takes the most
common answer; an expert's name makes that expert synthesise the final answer (its latency,
energy and cost count against the budgets). The default ``max_experts: 1`` picks the best
single expert within the budgets: with ``first``, extra members would add cost without
changing the answer. Set ``max_experts: 3`` and ``aggregator: <expert>`` for the paper's
ensemble.

**Budgets** come from the request (``max_latency_ms``, ``max_energy_j``, ``max_cost_usd``), the
API key's defaults (threaded into the request by the ingress), else this strategy's options of
the same names. **Per-request and per-key budgets are strict**: when no expert fits, the
request fails with 400 ``budget_infeasible`` naming what the cheapest/fastest expert needs
(``on_infeasible: fallback`` answers with the least-over-budget expert instead). The
strategy's own default budgets are soft: nothing fitting falls back, marked in the trace.

**Estimates.** Output tokens: ``expected_output_tokens`` if set, else the mean recorded
answer length of the expert's recorded model (≈4 characters per token; RouterBench records
answers), else the request's ``max_tokens`` — always capped by ``max_tokens``. Latency and
energy come from each expert's ``profile`` (configured, or measured by ``orchestrator
profile``); energy counts output tokens only. Cost comes from the expert's ``price`` when it
has one (prompt ≈ characters / 4 tokens), else from the gate's cost head (recorded USD).

What differs from the paper: the paper mixes the experts' output distributions and trains
the gate by cross-entropy on the task labels; LLM experts here may not share a tokenizer, so
the "mixture" is over recorded correctness, combination is by answer (first / vote /
synthesis), and the subset objective is the noisy-OR above (monotone, so the paper's discrete
monotonic optimisation applies; it assumes members err independently and that the combiner
keeps a right answer when one is present). Latency of the edge network (transmission) is not
modelled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from orchestrator.errors import ConfigError, InvalidRequestError
from orchestrator.evaluation.datasets import CHARS_PER_TOKEN, RoutingDataset, split
from orchestrator.types import Candidate, Decision, Query
from routers.base import StrategyOptions
from routers.subset_search import Budget, Overhead, Selection, branch_and_bound
from routers.trainable import FitResult, TrainableOptions, TrainableStrategy, embed

ValueKind = Literal["auto", "gated", "quality"]


class Moe2Options(TrainableOptions):
    max_latency_ms: float | None = Field(
        None, gt=0, description="Default latency budget when the request and API key set none."
    )
    max_energy_j: float | None = Field(
        None, gt=0, description="Default energy budget (J) when the request and key set none."
    )
    max_cost_usd: float | None = Field(
        None, ge=0, description="Default cost budget (USD) when the request and key set none."
    )
    max_experts: int = Field(
        1, ge=1, description="At most this many experts per query (a request's k overrides)."
    )
    aggregator: str = Field(
        "first",
        description="How two or more answers combine: 'first' (highest-value member), 'vote', "
        "or an expert's name (that expert synthesises; its cost counts against the budgets).",
    )
    expected_output_tokens: int | None = Field(
        None,
        ge=1,
        description="Tokens each expert is assumed to generate for latency/energy/cost "
        "estimates; default: the recorded mean answer length, else the request's max_tokens.",
    )
    on_infeasible: Literal["reject", "fallback"] = Field(
        "reject",
        description="When no expert fits a request's (or API key's) budget: 400 "
        "budget_infeasible, or answer with the least-over-budget expert.",
    )
    value: ValueKind = Field(
        "auto",
        description="Expert value: 'gated' (quality × the gate's relative weight), 'quality' "
        "(predicted quality alone), or 'auto' (the better on validation).",
    )
    hidden: int = Field(64, ge=4, description="Training: hidden units of the gating MLP.")
    max_epochs: int = Field(400, ge=1, description="Training: epoch limit.")
    patience: int = Field(30, ge=1, description="Training: epochs without validation gain.")
    lr: float = Field(3e-3, gt=0, description="Training: Adam learning rate.")
    weight_decay: float = Field(1e-3, ge=0, description="Training: Adam weight decay.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Training: dropout on the hidden layer.")
    smoothing: float = Field(
        0.02, ge=0, lt=0.5, description="Training: recorded scores squeezed into [ε, 1 − ε]."
    )
    refit: bool = Field(True, description="Training: refit on the whole split after stopping.")


class Moe2Strategy(TrainableStrategy):
    name = "moe2"
    Options = Moe2Options
    knob: ClassVar[str | None] = "max_cost_usd"

    # -- training ------------------------------------------------------------------------------

    @classmethod
    def fit(cls, data: RoutingDataset, options: StrategyOptions) -> FitResult:
        opts: Moe2Options = options  # type: ignore[assignment]
        fit_part, valid = split(data, opts.valid_fraction, seed=opts.seed, salt="moe2-valid")
        if len(valid) == 0 or len(fit_part) == 0:
            raise ValueError(f"moe2 needs more training rows than {len(data)} to hold out some")
        x_fit = embed(fit_part.prompts, opts.embedding_model)
        x_val = embed(valid.prompts, opts.embedding_model)
        net, epochs, curve = train_gate(x_fit, fit_part, x_val, valid, opts, epochs=None)
        w_val, q_val = gate_forward(net, x_val)
        c_val = predict_cost(net, x_val)
        s_val = np.nan_to_num(valid.scores, nan=0.0)
        grid = cost_grid(data.costs)
        # The value kind is chosen where moe2 works: single-expert choices under each cost
        # budget of the grid (predicted costs decide feasibility, recorded scores are scored).
        kinds = {
            kind: budgeted_accuracy(expert_values(w_val, q_val, kind), c_val, s_val, grid)
            for kind in ("gated", "quality")
        }
        value = opts.value if opts.value != "auto" else max(kinds, key=lambda k: kinds[k])
        rel_err = np.abs(c_val - valid.costs) / np.maximum(valid.costs, 1e-12)
        metrics: dict[str, Any] = {
            "fit_rows": len(fit_part),
            "valid_rows": len(valid),
            "epochs": epochs,
            **curve,
            "valid_quality_brier": float(np.mean((q_val - s_val) ** 2)),
            "valid_cost_median_relative_error": float(np.median(rel_err)),
            "valid_accuracy_over_cost_grid": kinds,
            "valid_accuracy_best_single": float(s_val.mean(axis=0).max()),
            "valid_accuracy_oracle": float(s_val.max(axis=1).mean()),
            "value": value,
        }
        if opts.refit:
            x_all = embed(data.prompts, opts.embedding_model)
            net, _, _ = train_gate(x_all, data, None, None, opts, epochs=epochs)
        categories = sorted(set(data.categories))
        cats = np.asarray(data.categories)
        category_quality = np.array(
            [np.nanmean(data.scores[cats == c], axis=0) for c in categories]
        )
        metrics["category_quality"] = {
            c: {m: round(float(q), 4) for m, q in zip(data.models, row, strict=True)}
            for c, row in zip(categories, category_quality, strict=True)
        }
        state = {
            "models": list(data.models),
            "net": net,
            "value": value,
            "output_tokens": recorded_output_tokens(data),
            "categories": categories,
            "category_quality": category_quality,
            "cost_grid": grid,
        }
        return FitResult(state, metrics)

    @classmethod
    def knob_values(cls, state: dict[str, Any]) -> list[float]:
        return [float(v) for v in state["cost_grid"]]

    # -- serving -------------------------------------------------------------------------------

    def load_state(self, state: dict[str, Any]) -> None:
        opts: Moe2Options = self.options  # type: ignore[assignment]
        names = set(self.expert_names())
        if opts.aggregator not in ("first", "vote") and opts.aggregator not in names:
            raise ConfigError(
                f"routing.strategies.moe2.aggregator: '{opts.aggregator}' is neither 'first', "
                f"'vote' nor an expert; experts: {', '.join(sorted(names))}"
            )
        self._net = {k: np.asarray(v, dtype=np.float32) for k, v in state["net"].items()}
        self._value: str = state["value"] if opts.value == "auto" else opts.value
        tokens = state.get("output_tokens")
        self._recorded_tokens = None if tokens is None else np.asarray(tokens, dtype=np.float64)
        by_name = {e.name: e for e in self.experts}
        self._configs = [by_name[self.expert_of[j] or ""] for j in self.served.tolist()]

    def route(self, queries: Sequence[Query]) -> list[Decision]:
        self.ensure_ready()
        x = self.embedder().encode([q.text for q in queries])
        w_all, q_all = gate_forward(self._net, x)
        c_all = predict_cost(self._net, x)
        served = self.served
        # The full gate restricted to the experts this pool serves (renormalised softmax).
        w = w_all[:, served]
        w = w / w.sum(axis=1, keepdims=True)
        q = q_all[:, served]
        values = expert_values(w, q, self._value)
        c = c_all[:, served]
        return [self._decide(query, w[r], q[r], values[r], c[r]) for r, query in enumerate(queries)]

    # -- one query -----------------------------------------------------------------------------

    def _budget(self, query: Query) -> tuple[Budget, set[str]]:
        """The effective budget and the fields the request (or its API key) set."""
        opts: Moe2Options = self.options  # type: ignore[assignment]
        o = query.options
        strict = {
            f
            for f, v in (
                ("max_latency_ms", o.max_latency_ms),
                ("max_energy_j", o.max_energy_j),
                ("max_cost_usd", o.max_cost_usd),
            )
            if v is not None
        }
        k = opts.max_experts if o.k is None else o.k
        budget = Budget(
            o.max_latency_ms if o.max_latency_ms is not None else opts.max_latency_ms,
            o.max_energy_j if o.max_energy_j is not None else opts.max_energy_j,
            o.max_cost_usd if o.max_cost_usd is not None else opts.max_cost_usd,
            max(1, k),
        )
        return budget, strict

    def resources(
        self, query: Query, predicted_cost: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per served expert for ``query``: estimated output tokens, latency (ms), energy (J)
        and cost (USD: from the expert's price, else ``predicted_cost``, the gate's cost
        head)."""
        opts: Moe2Options = self.options  # type: ignore[assignment]
        max_tokens = query.sampling.max_tokens
        prompt_chars = float(sum(len(m.content) for m in query.messages))
        n = len(self.served)
        tokens = np.empty(n)
        latency, energy, cost = np.empty(n), np.empty(n), np.empty(n)
        for s, (j, expert) in enumerate(zip(self.served.tolist(), self._configs, strict=True)):
            if opts.expected_output_tokens is not None:
                t = float(opts.expected_output_tokens)
            elif self._recorded_tokens is not None and self._recorded_tokens[j] > 0:
                t = float(self._recorded_tokens[j])
            else:
                t = float(max_tokens)
            t = min(t, float(max_tokens))
            tokens[s] = t
            p = expert.profile
            latency[s] = p.ttft_ms + p.ms_per_output_token * t
            energy[s] = p.energy_j_per_token * t
            price = expert.price
            if price.input_per_1m > 0 or price.output_per_1m > 0:
                system = len(expert.system_prompt or "")
                prompt_tokens = (prompt_chars + system) / CHARS_PER_TOKEN
                cost[s] = (prompt_tokens * price.input_per_1m + t * price.output_per_1m) / 1e6
            else:
                cost[s] = predicted_cost[s]
        return tokens, latency, energy, cost

    def _overhead(self, query: Query, count: int, tokens: np.ndarray, cost: np.ndarray) -> Overhead:
        """What an aggregator expert's synthesis adds to a subset of ``count`` ≥ 2 members:
        its latency and energy for the answer's tokens; its cost from its price (the prompt
        holds the question and ``count`` answers), else — when it is a served recorded model
        without a price — its predicted cost of answering the question itself."""
        opts: Moe2Options = self.options  # type: ignore[assignment]
        if count < 2 or opts.aggregator in ("first", "vote"):
            return Overhead()
        expert = next(e for e in self.experts if e.name == opts.aggregator)
        served = [self.expert_of[j] for j in self.served.tolist()]
        index = served.index(expert.name) if expert.name in served else None
        max_tokens = query.sampling.max_tokens
        if index is not None and opts.expected_output_tokens is None:
            t = float(tokens[index])
        else:
            t = float(min(opts.expected_output_tokens or max_tokens, max_tokens))
        p, price = expert.profile, expert.price
        if price.input_per_1m > 0 or price.output_per_1m > 0 or index is None:
            prompt_tokens = sum(len(m.content) for m in query.messages) / CHARS_PER_TOKEN
            prompt_tokens += count * t  # the members' answers
            usd = (prompt_tokens * price.input_per_1m + t * price.output_per_1m) / 1e6
        else:
            usd = float(cost[index])
        return Overhead(p.ttft_ms + p.ms_per_output_token * t, p.energy_j_per_token * t, usd)

    def _decide(
        self, query: Query, w: np.ndarray, q: np.ndarray, values: np.ndarray, c: np.ndarray
    ) -> Decision:
        opts: Moe2Options = self.options  # type: ignore[assignment]
        budget, strict = self._budget(query)
        tokens, latency, energy, cost = self.resources(query, c)
        v, lat, en, co = values.tolist(), latency.tolist(), energy.tolist(), cost.tolist()
        k = budget.max_experts or 1
        overhead = self._overhead(query, k, tokens, cost)
        selection = branch_and_bound(v, lat, en, co, budget, overhead)
        names = [self.expert_of[j] or "" for j in self.served.tolist()]
        details: dict[str, object] = {
            "budget": {
                "max_latency_ms": budget.max_latency_ms,
                "max_energy_j": budget.max_energy_j,
                "max_cost_usd": budget.max_cost_usd,
                "max_experts": budget.max_experts,
                "from_request": sorted(strict),
            },
            "value": self._value,
            "weights": {n: round(float(x), 4) for n, x in zip(names, w, strict=True)},
            "quality": {n: round(float(x), 4) for n, x in zip(names, q, strict=True)},
            "search_nodes": selection.nodes,
        }
        if not selection.feasible:
            least = self._infeasible(budget, strict, names, v, lat, en, co)
            selection = Selection(
                (least,), v[least], lat[least], en[least], co[least], selection.nodes
            )
            details["infeasible"] = True
        members = list(selection.members)
        details.update(
            {
                "subset": [names[i] for i in members],
                "expected_quality": round(selection.quality, 4),
                "estimate": {
                    "latency_ms": round(selection.latency_ms, 1),
                    "energy_j": round(selection.energy_j, 4),
                    "cost_usd": round(selection.cost_usd, 8),
                    "output_tokens": {names[i]: round(float(tokens[i]), 1) for i in members},
                },
            }
        )
        limit_l = math.inf if budget.max_latency_ms is None else budget.max_latency_ms
        limit_e = math.inf if budget.max_energy_j is None else budget.max_energy_j
        limit_c = math.inf if budget.max_cost_usd is None else budget.max_cost_usd
        fits_alone = {
            i
            for i in range(len(names))
            if lat[i] <= limit_l and en[i] <= limit_e and co[i] <= limit_c
        }
        rest = sorted(
            (i for i in range(len(names)) if i not in members),
            key=lambda i: (i not in fits_alone, -v[i], co[i]),
        )
        candidates = tuple(Candidate(names[i], round(v[i], 6)) for i in [*members, *rest])
        aggregator = opts.aggregator if len(members) >= 2 else None
        return Decision(
            strategy=self.name,
            experts=tuple(names[i] for i in members),
            candidates=candidates,
            reason=self._reason(budget, names, members, selection, details),
            aggregator=aggregator,
            version=self.version,
            details=details,
        )

    def _infeasible(
        self,
        budget: Budget,
        strict: set[str],
        names: list[str],
        v: list[float],
        lat: list[float],
        en: list[float],
        co: list[float],
    ) -> int:
        """No expert fits: 400 for strict budgets (unless ``on_infeasible: fallback``), else
        the expert whose worst overshoot (resource / budget) is smallest."""
        opts: Moe2Options = self.options  # type: ignore[assignment]
        limits = [
            ("max_latency_ms", budget.max_latency_ms, lat, "ms"),
            ("max_energy_j", budget.max_energy_j, en, "J"),
            ("max_cost_usd", budget.max_cost_usd, co, "USD"),
        ]
        if strict and opts.on_infeasible == "reject":
            needs = []
            param = None
            for field, limit, used, unit in limits:
                if limit is None:
                    continue
                low = min(range(len(used)), key=lambda i: used[i])
                if used[low] > limit:
                    param = param or field
                    best = {"ms": "fastest", "J": "most frugal", "USD": "cheapest"}[unit]
                    needs.append(
                        f"{field}={limit:g} but the {best} expert ({names[low]}) needs "
                        f"{used[low]:.6g} {unit}"
                    )
            message = (
                "no expert fits the budget: " + "; ".join(needs)
                if needs
                else "no single expert meets all budgets at once ("
                + ", ".join(f"{f}={lim:g}" for f, lim, _, _ in limits if lim is not None)
                + ")"
            )
            raise InvalidRequestError(
                message + "; raise the budget or drop it", param=param, code="budget_infeasible"
            )

        def overshoot(i: int) -> float:
            ratios = [used[i] / max(lim, 1e-12) for _, lim, used, _ in limits if lim is not None]
            return max(ratios, default=0.0)

        return min(range(len(names)), key=lambda i: (overshoot(i), -v[i]))

    def _reason(
        self,
        budget: Budget,
        names: list[str],
        members: list[int],
        selection: Selection,
        details: dict[str, object],
    ) -> str:
        limits = [
            f"latency ≤ {budget.max_latency_ms:g} ms" if budget.max_latency_ms is not None else "",
            f"energy ≤ {budget.max_energy_j:g} J" if budget.max_energy_j is not None else "",
            f"cost ≤ ${budget.max_cost_usd:g}" if budget.max_cost_usd is not None else "",
        ]
        said = ", ".join(x for x in limits if x) or "no budget"
        chosen = ", ".join(names[i] for i in members)
        est = (
            f"est. {selection.latency_ms:.0f} ms, {selection.energy_j:.3g} J, "
            f"${selection.cost_usd:.6f}"
        )
        if details.get("infeasible"):
            return f"budget ({said}) fits no expert: least over budget is {chosen} ({est})"
        return (
            f"budget ({said}; ≤ {budget.max_experts} expert(s)) → {{{chosen}}} "
            f"(expected quality {selection.quality:.2f}, {est}; "
            f"{selection.nodes} search nodes)"
        )


# -- the gating network --------------------------------------------------------------------------


def train_gate(
    x: np.ndarray,
    data: RoutingDataset,
    x_val: np.ndarray | None,
    valid: RoutingDataset | None,
    opts: Moe2Options,
    *,
    epochs: int | None,
) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
    """Train the gating MLP on ``data`` (rows aligned with embeddings ``x``); returns numpy
    weights, the epochs used and the validation losses at the best epoch.

    Three heads over one hidden layer: the gate (softmax, mixture likelihood), quality
    (sigmoid, binary cross-entropy) and cost (log USD per model, standardised, squared error).
    With validation data, trains up to ``max_epochs`` and keeps the epoch with the lowest
    validation loss (stopping after ``patience`` epochs without gain); without, trains exactly
    ``epochs`` epochs (the refit)."""
    import torch  # heavy: training only

    threads = torch.get_num_threads()
    # A net this small gains nothing from intra-op threads; on a busy machine they spin
    # (measured here: 1,000 small steps took 22 s on 2 threads vs 0.5 s on 1).
    torch.set_num_threads(1)
    try:
        return _train_gate(torch, x, data, x_val, valid, opts, epochs)
    finally:
        torch.set_num_threads(threads)


def _log_costs(costs: np.ndarray) -> np.ndarray:
    return np.asarray(np.log(np.maximum(np.asarray(costs, dtype=np.float64), 1e-12)))


def _train_gate(
    torch: Any,
    x: np.ndarray,
    data: RoutingDataset,
    x_val: np.ndarray | None,
    valid: RoutingDataset | None,
    opts: Moe2Options,
    epochs: int | None,
) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
    torch.manual_seed(opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    log_cost = _log_costs(data.costs)
    mu, sd = log_cost.mean(axis=0), np.maximum(log_cost.std(axis=0), 1e-3)
    d, m = x.shape[1], len(data.models)
    trunk = torch.nn.Sequential(
        torch.nn.Linear(d, opts.hidden), torch.nn.ReLU(), torch.nn.Dropout(opts.dropout)
    )
    heads = torch.nn.ModuleDict(
        {name: torch.nn.Linear(opts.hidden, m) for name in ("gate", "quality", "cost")}
    )
    params = [*trunk.parameters(), *heads.parameters()]
    step = _adam(torch, params, opts.lr, opts.weight_decay)
    eps = opts.smoothing

    def tensors(a: np.ndarray, part: RoutingDataset) -> tuple[Any, Any, Any]:
        scores = np.nan_to_num(part.scores, nan=0.0)
        z = (_log_costs(part.costs) - mu) / sd
        return (
            torch.as_tensor(a, dtype=torch.float32),
            torch.as_tensor(scores, dtype=torch.float32),
            torch.as_tensor(z, dtype=torch.float32),
        )

    def losses(a: Any, s: Any, z: Any) -> tuple[Any, Any, Any]:
        h = trunk(a)
        log_w = torch.log_softmax(heads["gate"](h), dim=1)
        s_smooth = eps + (1 - 2 * eps) * s
        mixture = -torch.logsumexp(log_w + torch.log(s_smooth), dim=1).mean()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(heads["quality"](h), s)
        mse = torch.nn.functional.mse_loss(heads["cost"](h), z)
        return mixture, bce, mse

    def export() -> dict[str, np.ndarray]:
        layer = trunk[0]
        out = {"w1": layer.weight, "b1": layer.bias}
        for name, key in (("gate", "g"), ("quality", "q"), ("cost", "c")):
            out[f"w{key}"], out[f"b{key}"] = heads[name].weight, heads[name].bias
        arrays = {
            k: v.detach().numpy().T.copy() if k.startswith("w") else v.detach().numpy().copy()
            for k, v in out.items()
        }
        arrays["cost_mu"], arrays["cost_sd"] = mu.astype(np.float32), sd.astype(np.float32)
        return arrays

    xt, st, zt = tensors(x, data)
    val = tensors(x_val, valid) if x_val is not None and valid is not None else None
    limit = epochs if epochs is not None else opts.max_epochs
    batch = 128
    best_loss, best_epoch = math.inf, 0
    best_curve = {"valid_mixture_nll": math.nan, "valid_quality_bce": math.nan}
    best_weights: dict[str, np.ndarray] | None = None
    for epoch in range(1, limit + 1):
        trunk.train()
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch):
            idx = order[start : start + batch]
            mixture, bce, mse = losses(xt[idx], st[idx], zt[idx])
            for p in params:
                p.grad = None
            (mixture + bce + mse).backward()
            step()
        if val is None:
            continue
        trunk.eval()
        with torch.no_grad():
            mixture, bce, mse = losses(*val)
        total = float(mixture + bce + mse)
        if total < best_loss - 1e-5:
            best_loss, best_epoch = total, epoch
            best_curve = {
                "valid_mixture_nll": float(mixture),
                "valid_quality_bce": float(bce),
                "valid_cost_mse": float(mse),
            }
            best_weights = export()
        elif epoch - best_epoch >= opts.patience:
            break
    if val is None or best_weights is None:
        return export(), limit, best_curve
    return best_weights, best_epoch, best_curve


def _adam(torch: Any, params: list[Any], lr: float, weight_decay: float) -> Any:
    """Adam with L2 weight decay (as ``torch.optim.Adam(weight_decay=...)``), written out
    because every ``torch.optim`` constructor imports ``torch._dynamo``: 2–7 s here, more than
    the whole training of this net."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    t = [0]

    def step() -> None:
        t[0] += 1
        c1, c2 = 1 - beta1 ** t[0], 1 - beta2 ** t[0]
        with torch.no_grad():
            for p, m_p, v_p in zip(params, m, v, strict=True):
                if p.grad is None:
                    continue
                g = p.grad + weight_decay * p if weight_decay else p.grad
                m_p.mul_(beta1).add_(g, alpha=1 - beta1)
                v_p.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                p.addcdiv_(m_p / c1, (v_p / c2).sqrt_().add_(eps), value=-lr)

    return step


def _hidden(net: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return np.asarray(np.maximum(np.asarray(x, dtype=np.float32) @ net["w1"] + net["b1"], 0.0))


def gate_forward(net: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gate weights (softmax over every recorded model) and predicted quality, per row."""
    h = _hidden(net, x)
    logits = h @ net["wg"] + net["bg"]
    logits = logits - logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(axis=1, keepdims=True)
    q = 1.0 / (1.0 + np.exp(-(h @ net["wq"] + net["bq"])))
    return w.astype(np.float64), q.astype(np.float64)


def predict_cost(net: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Predicted USD cost per row and recorded model (the cost head, de-standardised)."""
    z = _hidden(net, x) @ net["wc"] + net["bc"]
    return np.asarray(np.exp(z.astype(np.float64) * net["cost_sd"] + net["cost_mu"]))


def expert_values(w: np.ndarray, q: np.ndarray, kind: str) -> np.ndarray:
    """Per-expert value ``v`` in [0, 1]: ``q`` (quality) or ``q · w / max w`` (gated)."""
    if kind == "quality":
        return np.asarray(np.clip(q, 0.0, 1.0))
    trust = w / np.maximum(w.max(axis=1, keepdims=True), 1e-12)
    return np.asarray(np.clip(q * trust, 0.0, 1.0))


def budgeted_accuracy(
    values: np.ndarray, predicted: np.ndarray, scores: np.ndarray, budgets: Sequence[float]
) -> float:
    """Mean recorded score of single-expert choices over ``budgets``: per row the highest
    value among models whose predicted cost fits, else the cheapest predicted."""
    rows = np.arange(len(values))
    total = 0.0
    for b in budgets:
        fits = predicted <= b
        pick = np.where(fits, values, -np.inf).argmax(axis=1)
        pick = np.where(fits.any(axis=1), pick, predicted.argmin(axis=1))
        total += float(scores[rows, pick].mean())
    return total / max(len(budgets), 1)


# -- resources learned from recorded data ------------------------------------------------------


def recorded_output_tokens(data: RoutingDataset) -> np.ndarray | None:
    """Mean recorded answer length per model in tokens (≈ characters / 4, at least 1), or None
    when the dataset records no answers."""
    if data.responses is None:
        return None
    out = np.zeros(len(data.models))
    for j in range(len(data.models)):
        lengths = [len(t) for i in range(len(data)) if (t := data.response(i, j)) is not None]
        out[j] = max(float(np.mean(lengths)) / CHARS_PER_TOKEN, 1.0) if lengths else 0.0
    return out


def cost_grid(costs: np.ndarray, points: int = 14) -> list[float]:
    """Per-query cost budgets swept by ``orchestrator eval``: log-spaced from half the cheapest
    model's median cost to twice the priciest model's."""
    medians = np.median(costs, axis=0)
    low, high = max(float(medians.min()) / 2, 1e-9), max(float(medians.max()) * 2, 1e-8)
    return [float(f"{v:.3g}") for v in np.geomspace(low, high, points)]
