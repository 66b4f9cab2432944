"""Recorded-outcome datasets: what real LLMs did on real prompts, in one in-memory form.

Every loader takes a path (a folder or a file), so users can point it at the full upstream
data instead of the development splits in ``../shared/data``. All three produce a
:class:`RoutingDataset`: prompts, a category (or task) per prompt, a per-model score matrix
(correctness 0/1 or a graded score in [0, 1]; NaN where nothing was recorded), a per-model cost
matrix in USD, and, where recorded, the models' response texts, reference answers and
multiple-choice options.

Costs differ in provenance, and every dataset says which in :attr:`RoutingDataset.cost_source`:

* RouterBench — as recorded (``<model>|total_cost``, USD per prompt).
* LLMRouter — the price table ``default_llm.json`` (USD per 1M input/output tokens) × a length
  estimate: prompt tokens ≈ characters / 4, completion tokens = ``completion_tokens`` (256).
* MMLU-Pro — *derived from parameter count* (no prices exist): USD per 1M tokens =
  0.20 × (active parameters in B / 7) ^ 0.6, a curve fitted to the LLMRouter price table of
  hosted open models (7 B → 0.20, 70 B → 0.80, 141 B → 1.21); tokens ≈ (question + options
  characters + the model's recorded output characters) / 4. MoE models use active parameters;
  Gemini sizes are undisclosed and *assumed* (see :data:`MMLU_PRO_ACTIVE_PARAMS_B`).

Splits (:func:`split`) hash a per-row group key (the normalised prompt text by default, the
question text for MMLU-Pro), so identical prompts always land in the same split.
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import json
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.errors import ConfigError

csv.field_size_limit(2**31 - 1)  # RouterBench cells hold whole model answers

CHARS_PER_TOKEN = 4.0
"""Length estimate where no token counts were recorded: ~4 characters per token (English)."""


@dataclass(frozen=True, eq=False)
class RoutingDataset:
    """Prompts × models with recorded outcomes. Rows are prompts, columns are models.

    ``scores[i, j]`` is model j's recorded quality on prompt i (0/1 correctness or a graded
    score in [0, 1], NaN = no record); ``costs[i, j]`` its cost in USD. ``responses`` (when
    recorded) holds raw response cells, decoded by :meth:`response`.
    """

    name: str
    prompts: list[str]
    categories: list[str]
    models: list[str]
    scores: np.ndarray
    costs: np.ndarray
    ids: list[str]
    cost_source: str
    source: str = ""
    responses: np.ndarray | None = None
    answers: list[str | None] | None = None
    choices: list[list[str]] | None = None
    groups: list[str] | None = None
    notes: tuple[str, ...] = ()
    _fingerprint: list[str] = field(default_factory=list, repr=False)
    _rows: dict[str, int] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        n, m = len(self.prompts), len(self.models)
        if self.scores.shape != (n, m) or self.costs.shape != (n, m):
            raise ValueError(
                f"{self.name}: scores {self.scores.shape} / costs {self.costs.shape} do not match "
                f"{n} prompts × {m} models"
            )
        for label, values in (("categories", self.categories), ("ids", self.ids)):
            if len(values) != n:
                raise ValueError(f"{self.name}: {len(values)} {label} for {n} prompts")

    def __len__(self) -> int:
        return len(self.prompts)

    # -- identity ------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """A short hash of prompts, models, scores and costs: names the exact training data."""
        if not self._fingerprint:
            h = hashlib.sha256()
            h.update(self.name.encode())
            for values in (self.models, self.prompts):
                for v in values:
                    h.update(v.encode())
                    h.update(b"\0")
            h.update(np.ascontiguousarray(np.nan_to_num(self.scores, nan=-1.0)).tobytes())
            h.update(np.ascontiguousarray(self.costs).round(12).tobytes())
            self._fingerprint.append(h.hexdigest()[:16])
        return self._fingerprint[0]

    def describe(self) -> dict[str, Any]:
        """What a trained artifact or a results file records about its data."""
        return {
            "name": self.name,
            "source": self.source,
            "fingerprint": self.fingerprint(),
            "rows": len(self),
            "models": list(self.models),
            "categories": sorted(set(self.categories)),
            "cost_source": self.cost_source,
            "notes": list(self.notes),
        }

    # -- views ---------------------------------------------------------------------------------

    def subset(self, rows: Sequence[int] | np.ndarray) -> RoutingDataset:
        idx = np.asarray(rows, dtype=np.int64)
        pick = idx.tolist()

        def take(values: list[Any] | None) -> list[Any] | None:
            return None if values is None else [values[i] for i in pick]

        return replace(
            self,
            prompts=[self.prompts[i] for i in pick],
            categories=[self.categories[i] for i in pick],
            ids=[self.ids[i] for i in pick],
            scores=self.scores[idx],
            costs=self.costs[idx],
            responses=None if self.responses is None else self.responses[idx],
            answers=take(self.answers),
            choices=take(self.choices),
            groups=take(self.groups),
            _fingerprint=[],
            _rows={},
            _lock=threading.Lock(),
        )

    def select_models(self, models: Sequence[str]) -> RoutingDataset:
        cols = [self.model_index(m) for m in models]
        return replace(
            self,
            models=list(models),
            scores=self.scores[:, cols],
            costs=self.costs[:, cols],
            responses=None if self.responses is None else self.responses[:, cols],
            _fingerprint=[],
        )

    def complete(self) -> tuple[RoutingDataset, int]:
        """Only the rows where every model has a recorded outcome, and how many were dropped."""
        keep = np.flatnonzero(~np.isnan(self.scores).any(axis=1))
        if len(keep) == len(self):
            return self, 0
        return self.subset(keep), len(self) - len(keep)

    def row_of(self, prompt: str) -> int | None:
        """The first row whose prompt is ``prompt`` (surrounding whitespace ignored)."""
        with self._lock:
            if not self._rows and self.prompts:
                for i, p in enumerate(self.prompts):
                    self._rows.setdefault(p.strip(), i)
        return self._rows.get(prompt.strip())

    def model_index(self, model: str) -> int:
        try:
            return self.models.index(model)
        except ValueError:
            raise ConfigError(
                f"model '{model}' is not recorded in dataset {self.name}; "
                f"recorded: {', '.join(self.models)}"
            ) from None

    def group_key(self, i: int) -> str:
        return self.groups[i] if self.groups is not None else normalize_prompt(self.prompts[i])

    def response(self, i: int, j: int) -> str | None:
        """Model j's recorded answer text on prompt i, or None where none was recorded."""
        if self.responses is None:
            return None
        cell = self.responses[i, j]
        if cell is None or cell == "":
            return None
        text = str(cell)
        if text.startswith("[") and text.endswith("]"):
            try:  # RouterBench stores a Python-literal list holding one string
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
            if isinstance(value, list) and value and isinstance(value[0], str):
                return value[0]
        return text


def normalize_prompt(text: str) -> str:
    """The key for deduplication and split hashing: lower-case, whitespace collapsed."""
    return " ".join(text.lower().split())


def tokens_estimate(chars: float) -> float:
    return math.ceil(chars / CHARS_PER_TOKEN) if chars > 0 else 0.0


# -- splits ------------------------------------------------------------------------------------


def hash_unit(key: str, salt: str) -> float:
    """A stable pseudo-random number in [0, 1) for ``key`` (independent of row order)."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(
    data: RoutingDataset, fraction: float, *, seed: int = 0, salt: str = "test"
) -> tuple[RoutingDataset, RoutingDataset]:
    """(rest, held-out): a row is held out when the hash of its group key is below ``fraction``.

    The decision depends only on the prompt's group key, the seed and the salt — never on row
    order — so identical prompts can never straddle the two sides, and a validation split
    carved from a train split with another salt is disjoint from the test split by construction.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    held = np.array(
        [hash_unit(data.group_key(i), f"{salt}:{seed}") < fraction for i in range(len(data))]
    )
    return data.subset(np.flatnonzero(~held)), data.subset(np.flatnonzero(held))


def sample(data: RoutingDataset, limit: int | None, *, seed: int = 0) -> RoutingDataset:
    """At most ``limit`` rows, chosen by hash (stable across runs, stratified by nothing)."""
    if limit is None or limit >= len(data):
        return data
    order = sorted(range(len(data)), key=lambda i: hash_unit(data.group_key(i), f"sample:{seed}"))
    return data.subset(sorted(order[:limit]))


# -- RouterBench ---------------------------------------------------------------------------------


def load_routerbench(path: str | Path) -> RoutingDataset:
    """RouterBench CSVs (RouterDC's ``routerbench_zs/*.csv`` layout): a file or a folder of them.

    Columns: ``sample_id``, ``prompt`` (a Python-literal list holding one string),
    ``eval_name``; per model a 0/1 column named by the model, ``<model>|model_response`` and
    ``<model>|total_cost`` (USD).
    """
    files = _files(path, "*.csv", "RouterBench")
    prompts: list[str] = []
    categories: list[str] = []
    ids: list[str] = []
    scores: list[list[float]] = []
    costs: list[list[float]] = []
    responses: list[list[str]] = []
    models: list[str] | None = None
    for f in files:
        with open(f, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            found = [h for h in header if f"{h}|total_cost" in header]
            if not found or "prompt" not in header:
                raise ConfigError(f"{f} is not a RouterBench CSV (no prompt / <model>|total_cost)")
            if models is None:
                models = found
            elif set(found) != set(models):
                raise ConfigError(f"{f} records other models than {files[0]}")
            for row in reader:
                prompts.append(_routerbench_prompt(row["prompt"]))
                categories.append(row.get("eval_name") or f.stem)
                ids.append(row.get("sample_id") or f"{f.stem}:{len(ids)}")
                scores.append([_float(row[m]) for m in models])
                costs.append([_float(row[f"{m}|total_cost"]) for m in models])
                responses.append([row.get(f"{m}|model_response", "") for m in models])
    assert models is not None
    return RoutingDataset(
        name="routerbench",
        prompts=prompts,
        categories=categories,
        models=models,
        scores=np.array(scores, dtype=np.float64),
        costs=np.nan_to_num(np.array(costs, dtype=np.float64), nan=0.0),
        ids=ids,
        cost_source="recorded (RouterBench <model>|total_cost, USD per prompt)",
        source=str(path),
        responses=np.array(responses, dtype=object),
    )


def _routerbench_prompt(cell: str) -> str:
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError):
        return cell
    if isinstance(value, list) and value:
        return str(value[0])
    return str(value)


# -- LLMRouter -----------------------------------------------------------------------------------


def load_llmrouter(path: str | Path, *, completion_tokens: int = 256) -> RoutingDataset:
    """LLMRouter routing data: ``train_flat.csv`` (question, task_name, ground_truth,
    ``score::<model>``) or ``dcrouter_train.json`` (question, scores, cluster_id — the cluster
    becomes the category), priced with ``default_llm.json`` beside it.

    A folder prefers ``train_flat.csv`` (it carries task names). Cost per prompt =
    (input price × ceil(chars / 4) + output price × ``completion_tokens``) / 1e6.
    """
    p = Path(path)
    if p.is_dir():
        file = (
            p / "train_flat.csv" if (p / "train_flat.csv").is_file() else p / "dcrouter_train.json"
        )
        prices_file = p / "default_llm.json"
    else:
        file, prices_file = p, p.parent / "default_llm.json"
    if not file.is_file():
        raise ConfigError(
            f"no LLMRouter data at {p} (expected train_flat.csv or dcrouter_train.json)"
        )
    if not prices_file.is_file():
        raise ConfigError(f"no price table at {prices_file} (LLMRouter's default_llm.json)")
    prices = json.loads(prices_file.read_text())

    prompts: list[str] = []
    categories: list[str] = []
    answers: list[str | None] = []
    rows: list[dict[str, float]] = []
    if file.suffix == ".json":
        for item in json.loads(file.read_text()):
            prompts.append(item["question"])
            categories.append(f"cluster_{item.get('cluster_id', 0)}")
            answers.append(None)
            rows.append({k: float(v) for k, v in item["scores"].items()})
    else:
        with open(file, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                prompts.append(row["question"])
                categories.append(row.get("task_name") or "unknown")
                answers.append(row.get("ground_truth"))
                rows.append(
                    {
                        k[len("score::") :]: _float(v)
                        for k, v in row.items()
                        if k.startswith("score::")
                    }
                )
    models = list(rows[0]) if rows else []
    missing = [m for m in models if m not in prices]
    if missing:
        raise ConfigError(f"{prices_file} has no price for {missing}")
    in_price = np.array([float(prices[m]["input_price"]) for m in models])
    out_price = np.array([float(prices[m]["output_price"]) for m in models])
    prompt_tokens = np.array([tokens_estimate(len(q)) for q in prompts], dtype=np.float64)
    costs = (np.outer(prompt_tokens, in_price) + completion_tokens * out_price[None, :]) / 1e6
    return RoutingDataset(
        name="llmrouter",
        prompts=prompts,
        categories=categories,
        models=models,
        scores=np.array([[r.get(m, math.nan) for m in models] for r in rows], dtype=np.float64),
        costs=costs,
        ids=[f"llmrouter:{i}" for i in range(len(prompts))],
        cost_source=(
            f"price table ({prices_file.name}, USD per 1M tokens) × length estimate: prompt "
            f"tokens ≈ chars/4, completion tokens = {completion_tokens}"
        ),
        source=str(file),
        answers=answers,
    )


# -- MMLU-Pro ------------------------------------------------------------------------------------

MMLU_PRO_ACTIVE_PARAMS_B: dict[str, tuple[float, str]] = {
    "DeepSeek-Coder-V2": (21.0, "MoE: 236 B total, 21 B active"),
    "Llama-2-13b-hf": (13.0, ""),
    "Llama-2-70b-hf": (70.0, ""),
    "Llama-2-7b-hf": (7.0, ""),
    "Meta-Llama-3-70B": (70.0, ""),
    "Meta-Llama-3-8B": (8.0, ""),
    "Meta-Llama-3_1-70B-Instruct": (70.0, ""),
    "Meta-Llama-3_1-70B": (70.0, ""),
    "Meta-Llama-3_1-8B-Instruct": (8.0, ""),
    "Meta-Llama-3_1-8B": (8.0, ""),
    "Mistral-7B-Instruct-v0.1": (7.2, ""),
    "Mistral-7B-Instruct-v0.2": (7.2, ""),
    "Mistral-7B-v0.1": (7.2, ""),
    "Mistral-7B-v0.2-hf": (7.2, ""),
    "Mixtral-8x7B-Instruct-v0.1": (12.9, "MoE: 46.7 B total, 12.9 B active"),
    "Mixtral-8x7B-v0.1": (12.9, "MoE: 46.7 B total, 12.9 B active"),
    "Phi-3-mini-4k-instruct": (3.8, ""),
    "Qwen1.5-110B": (111.0, ""),
    "Qwen1.5-72B-Chat": (72.0, ""),
    "Qwen1.5-7B-Chat": (7.7, ""),
    "Yi-34B": (34.0, ""),
    "Yi-6B": (6.0, ""),
    "Yi-6b-Chat": (6.0, ""),
    "c4ai-command-r-v01": (35.0, ""),
    "gemini-1.5-flash-002": (32.0, "undisclosed; ASSUMED 32 B"),
    "gemini-1.5-pro-002": (200.0, "undisclosed; ASSUMED 200 B"),
    "gemma-7b": (8.5, ""),
    "jamba-1.5-large": (94.0, "MoE: 398 B total, 94 B active"),
    "mathstral-7B": (7.3, ""),
}
"""Active parameters (billions) per MMLU-Pro model, the only basis of its derived prices."""


def price_from_params(active_params_b: float) -> float:
    """USD per 1M tokens from active parameter count: 0.20 × (B / 7) ^ 0.6 (fitted to the
    LLMRouter price table of hosted open models)."""
    return float(0.20 * (active_params_b / 7.0) ** 0.6)


def load_mmlu_pro(path: str | Path) -> RoutingDataset:
    """The MMLU-Pro correctness matrix: a folder with ``questions.csv.gz`` (question_id,
    category, src, answer, question, options), ``correct.csv.gz`` (question_id × model, 1/0,
    empty = no record) and ``output_chars.csv.gz`` (characters each model generated).

    The prompt is the question followed by its lettered options. Prices are derived from
    parameter count (:func:`price_from_params`); a model missing from
    :data:`MMLU_PRO_ACTIVE_PARAMS_B` is an error.
    """
    p = Path(path)
    files = {n: p / f"{n}.csv.gz" for n in ("questions", "correct", "output_chars")}
    for f in files.values():
        if not f.is_file():
            raise ConfigError(
                f"no MMLU-Pro file {f} (expected questions/correct/output_chars.csv.gz)"
            )
    questions = _read_gz_csv(files["questions"])
    correct = {r["question_id"]: r for r in _read_gz_csv(files["correct"])}
    chars = {r["question_id"]: r for r in _read_gz_csv(files["output_chars"])}
    first = next(iter(correct.values()))
    models = [k for k in first if k != "question_id"]
    unknown = [m for m in models if m not in MMLU_PRO_ACTIVE_PARAMS_B]
    if unknown:
        raise ConfigError(
            f"no parameter count for MMLU-Pro models {unknown}; "
            "add them to MMLU_PRO_ACTIVE_PARAMS_B"
        )
    price = np.array([price_from_params(MMLU_PRO_ACTIVE_PARAMS_B[m][0]) for m in models])

    prompts: list[str] = []
    categories: list[str] = []
    ids: list[str] = []
    answers: list[str | None] = []
    options: list[list[str]] = []
    groups: list[str] = []
    scores = np.full((len(questions), len(models)), np.nan)
    out_chars = np.zeros((len(questions), len(models)))
    for i, q in enumerate(questions):
        opts = [str(o) for o in json.loads(q["options"])]
        prompts.append(format_multiple_choice(q["question"], opts))
        categories.append(q["category"])
        ids.append(f"mmlu_pro:{q['question_id']}")
        answers.append(q["answer"])
        options.append(opts)
        groups.append(normalize_prompt(q["question"]))
        c, o = correct.get(q["question_id"], {}), chars.get(q["question_id"], {})
        for j, m in enumerate(models):
            scores[i, j] = _float(c.get(m, ""))
            out_chars[i, j] = np.nan_to_num(_float(o.get(m, "")), nan=0.0)
    prompt_tokens = np.array([tokens_estimate(len(s)) for s in prompts])[:, None]
    out_tokens = np.ceil(out_chars / CHARS_PER_TOKEN)
    assumed = [
        f"{m}: {note}"
        for m, (_, note) in MMLU_PRO_ACTIVE_PARAMS_B.items()
        if "ASSUMED" in note and m in models
    ]
    return RoutingDataset(
        name="mmlu_pro",
        prompts=prompts,
        categories=categories,
        models=models,
        scores=scores,
        costs=(prompt_tokens + out_tokens) * price[None, :] / 1e6,
        ids=ids,
        cost_source=(
            "DERIVED from parameter count (MMLU-Pro records no prices): USD/1M tokens = "
            "0.20 × (active params B / 7)^0.6, tokens ≈ (prompt + recorded output chars) / 4"
        ),
        source=str(p),
        answers=answers,
        choices=options,
        groups=groups,
        notes=tuple(assumed),
    )


def format_multiple_choice(question: str, options: Sequence[str]) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    lines = [question.strip(), ""]
    lines += [f"{letters[k]}) {opt}" for k, opt in enumerate(options)]
    return "\n".join(lines)


# -- registry ------------------------------------------------------------------------------------

LOADERS: dict[str, Callable[[Path], RoutingDataset]] = {
    "routerbench": load_routerbench,
    "llmrouter": load_llmrouter,
    "mmlu_pro": load_mmlu_pro,
}


def dataset_names() -> list[str]:
    return sorted(LOADERS)


def default_data_dir() -> Path | None:
    """``$ORCHESTRATOR_DATA_DIR``, else ``../shared/data`` beside the repository when it exists."""
    env = os.environ.get("ORCHESTRATOR_DATA_DIR")
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def resolve_path(
    name: str, path: str | Path | None = None, data_dir: str | Path | None = None
) -> Path:
    """Where dataset ``name`` lives: ``path`` as given, else ``<data_dir>/<name>``."""
    if path is not None:
        return Path(path)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if root is None:
        raise ConfigError(
            f"no path for dataset '{name}': pass its path, --data-dir, or set ORCHESTRATOR_DATA_DIR"
        )
    return root / name


_cache: dict[tuple[str, str], RoutingDataset] = {}


def load_dataset(
    name: str, path: str | Path | None = None, *, data_dir: str | Path | None = None
) -> RoutingDataset:
    """Load (once per process) the dataset ``name`` from ``path`` or ``<data_dir>/<name>``."""
    loader = LOADERS.get(name)
    if loader is None:
        raise ConfigError(f"unknown dataset '{name}'; valid: {', '.join(dataset_names())}")
    where = resolve_path(name, path, data_dir)
    if not where.exists():
        raise ConfigError(f"dataset '{name}': {where} does not exist")
    key = (name, str(where.resolve()))
    if key not in _cache:
        _cache[key] = loader(where)
    return _cache[key]


# -- helpers -------------------------------------------------------------------------------------


def _files(path: str | Path, pattern: str, what: str) -> list[Path]:
    p = Path(path)
    files = sorted(p.glob(pattern)) if p.is_dir() else [p]
    if not files or not all(f.is_file() for f in files):
        raise ConfigError(f"no {what} files at {p}")
    return files


def _float(cell: str | None) -> float:
    if cell is None or cell.strip() == "":
        return math.nan
    try:
        return float(cell)
    except ValueError:
        return math.nan


def _read_gz_csv(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
