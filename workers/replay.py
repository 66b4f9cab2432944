"""``replay``: an expert that answers as a real LLM did, from recorded outcomes.

The expert's ``engine`` options name the recording::

    engine: {dataset: routerbench, path: ../shared/data/routerbench, model: gpt-4-1106-preview}

``dataset`` is ``routerbench``, ``llmrouter`` or ``mmlu_pro``; ``path`` a folder or file of
it (default: ``<data dir>/<dataset>``, see
:func:`orchestrator.evaluation.datasets.default_data_dir`); ``model`` the recorded model
(default: the expert's ``model``). The prompt is looked up by its exact text (the last user
message; surrounding whitespace ignored; the first record wins where a prompt repeats). An
unrecorded prompt is an :class:`InvalidRequestError` (400, code ``prompt_not_recorded``):
every replay expert of the dataset would fail the same way, so there is no fallback.

The answer is the model's recorded response text where the dataset has one (RouterBench);
otherwise (LLMRouter, MMLU-Pro record only scores) a one-line marker stating the recorded
outcome. :meth:`ReplayBackend.outcome` gives the full record: text, score, cost and whether the
text was recorded. Usage is estimated at ~4 characters per token. Optional ``delay_ms``
sleeps before answering (to mimic latency in load tests).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.config import ExpertConfig
from orchestrator.errors import BackendError, ConfigError, InvalidRequestError
from orchestrator.evaluation.datasets import (
    RoutingDataset,
    dataset_names,
    load_dataset,
    tokens_estimate,
)
from orchestrator.types import Generation, GenerationRequest, Usage
from workers.base import Backend


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """What the recorded model did on one prompt."""

    text: str
    score: float
    cost_usd: float
    recorded_text: bool
    row: int


class ReplayBackend(Backend):
    name = "replay"

    def __init__(self, expert: ExpertConfig) -> None:
        super().__init__(expert)
        opts = expert.engine
        self.dataset_name = str(opts.get("dataset", ""))
        if self.dataset_name not in dataset_names():
            raise ConfigError(
                f"expert '{expert.name}': engine.dataset must be one of "
                f"{', '.join(dataset_names())} for the replay backend, got '{self.dataset_name}'"
            )
        self.path = opts.get("path")
        self.model = str(opts.get("model") or expert.model)
        self.delay_ms = float(opts.get("delay_ms", 0))
        self.data: RoutingDataset | None = None
        self._column = -1

    async def load(self) -> None:
        if self.data is None:
            data = await asyncio.to_thread(load_dataset, self.dataset_name, self.path)
            column = data.model_index(self.model)  # ConfigError naming the recorded models
            await asyncio.to_thread(data.row_of, "")  # build the prompt index off the loop
            self.data, self._column = data, column
        self.loaded = True

    def outcome(self, prompt: str) -> ReplayOutcome:
        """The recorded outcome of this expert's model on ``prompt``.

        Raises :class:`InvalidRequestError` for a prompt the dataset does not hold and
        :class:`BackendError` where the model has no record for it.
        """
        if self.data is None:
            raise BackendError(f"expert '{self.expert.name}' is not loaded")
        data, j = self.data, self._column
        row = data.row_of(prompt)
        if row is None:
            preview = " ".join(prompt.split())[:80]
            raise InvalidRequestError(
                f"expert '{self.expert.name}' replays recorded outcomes of dataset "
                f"'{data.name}' ({data.source}), which has no prompt '{preview}'; send one of "
                "its recorded prompts verbatim",
                param="messages",
                code="prompt_not_recorded",
            )
        score = float(data.scores[row, j])
        if math.isnan(score):
            raise BackendError(
                f"expert '{self.expert.name}': {self.model} has no recorded outcome for "
                f"{data.ids[row]} in {data.name}"
            )
        cost = float(data.costs[row, j])
        text = data.response(row, j)
        if text is not None:
            return ReplayOutcome(text, score, cost, True, row)
        verdict = "correct" if score >= 1.0 else "wrong" if score <= 0.0 else f"score {score:.2f}"
        marker = (
            f"[replay of {self.model} on {data.name}/{data.ids[row]}: no response text "
            f"recorded; recorded outcome {verdict}, cost ${cost:.6f}]"
        )
        return ReplayOutcome(marker, score, cost, False, row)

    def _answer(self, request: GenerationRequest) -> Generation:
        users = [m.content for m in request.messages if m.role == "user"]
        outcome = self.outcome(users[-1] if users else "")
        words = outcome.text.split(" ")
        limit = request.sampling.max_tokens
        text, finish = outcome.text, "stop"
        if tokens_estimate(len(text)) > limit:  # honour max_tokens like a real engine would
            text, finish = " ".join(words[: max(1, int(limit * 0.75))]), "length"
        prompt_chars = sum(len(m.content) for m in request.messages)
        usage = Usage(int(tokens_estimate(prompt_chars)), int(tokens_estimate(len(text))))
        return Generation(text, usage, "length" if finish == "length" else "stop")

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if not self.loaded:
            await self.load()
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000)
        return [self._answer(r) for r in requests]
