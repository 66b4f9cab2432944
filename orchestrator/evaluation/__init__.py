"""Offline evaluation of routing strategies on recorded outcomes of real LLMs.

The data path, in the order ``orchestrator eval`` runs it:

1. :mod:`.datasets` — loaders (RouterBench CSV, LLMRouter JSON/CSV, the MMLU-Pro matrix) into
   one :class:`~orchestrator.evaluation.datasets.RoutingDataset`, and leakage-free splits.
2. :mod:`routers` — each trainable strategy's ``fit(train) -> state``, saved as a versioned
   artifact by :mod:`routers.artifacts`; the strategy then routes test prompts through the same
   ``route()`` the server calls.
3. :mod:`.metrics` — accuracy, cost, the cost–quality curve over a knob, AIQ, cost to reach a
   target accuracy.
4. :mod:`.harness` — baselines (single models, random, oracle), knob selection on validation,
   the sweep on the held-out split.
5. :mod:`.report` — the terminal table (rich), JSON and PNG plots (matplotlib).
"""
