"""``orchestrator eval`` and ``orchestrator train``. Heavy imports stay inside the commands."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

err = Console(stderr=True)

DatasetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--dataset", "-d", help="routerbench, llmrouter or mmlu_pro (repeat for several)."
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="Folder holding <dataset>/ folders; default ../shared/data beside the repo "
        "(or $ORCHESTRATOR_DATA_DIR)."
    ),
]
PathOpt = Annotated[
    Path | None, typer.Option(help="The dataset's own folder or file (one dataset only).")
]
OptionOpt = Annotated[
    list[str] | None,
    typer.Option("--option", "-o", help="Strategy option, e.g. coe.min_confidence=0.5 (repeat)."),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (for artifacts_dir).")
]
ArtifactsOpt = Annotated[
    Path | None,
    typer.Option(help="Where artifacts are saved; default: the config's artifacts_dir."),
]
SeedOpt = Annotated[int, typer.Option(help="Salt of the hash splits.")]
TestFractionOpt = Annotated[float, typer.Option(help="Share of prompts held out for testing.")]
CacheOpt = Annotated[Path, typer.Option(help="Embedding cache folder (reused across runs).")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not read or write it.")]
LimitOpt = Annotated[int | None, typer.Option(help="Use at most this many prompts (by hash).")]


def parse_options(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["coe.min_confidence=0.5", "knn.k=20"]`` → ``{"coe": {"min_confidence": 0.5}, ...}``
    (values read as YAML, so numbers, booleans and lists work)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        strategy, dot, option = key.partition(".")
        if not sep or not dot or not option:
            raise typer.BadParameter(f"'{item}': expected <strategy>.<option>=<value>")
        out.setdefault(strategy.strip(), {})[option.strip()] = yaml.safe_load(value)
    return out


def _artifacts_dir(config: Path | None, artifacts_dir: Path | None) -> Path:
    if artifacts_dir is not None:
        return artifacts_dir
    if config is not None:
        from orchestrator.config import load_config

        return load_config(config).artifacts_dir
    from orchestrator.config import OrchestratorConfig

    default = OrchestratorConfig.model_fields["artifacts_dir"].default
    return Path(default)


def _datasets(
    names: list[str] | None, data_dir: Path | None, path: Path | None, limit: int | None, seed: int
) -> list[Any]:
    from orchestrator.errors import ConfigError
    from orchestrator.evaluation.datasets import dataset_names, load_dataset, sample

    chosen = names or dataset_names()
    if path is not None and len(chosen) != 1:
        raise typer.BadParameter("--path needs exactly one --dataset")
    out = []
    for name in chosen:
        try:
            data = load_dataset(name, path, data_dir=data_dir)
        except ConfigError as e:
            err.print(f"[red]dataset error[/red]: {e.message}")
            raise typer.Exit(2) from None
        out.append(sample(data, limit, seed=seed))
    return out


def eval_command(
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    path: PathOpt = None,
    strategies: Annotated[
        str, typer.Option("--strategies", "-s", help="Comma-separated registered strategies.")
    ] = "coe,knn,threshold,random,symbolic-moe",
    option: OptionOpt = None,
    test_fraction: TestFractionOpt = 0.3,
    valid_fraction: Annotated[
        float, typer.Option(help="Share of the train split used to choose knobs.")
    ] = 0.2,
    seed: SeedOpt = 0,
    limit: LimitOpt = None,
    out: Annotated[Path, typer.Option(help="Results folder (one subfolder per dataset).")] = Path(
        "results/eval"
    ),
    config: ConfigOpt = None,
    artifacts_dir: ArtifactsOpt = None,
    save_artifacts: Annotated[
        bool, typer.Option("--save-artifacts/--no-save-artifacts", help="Keep trained artifacts.")
    ] = True,
    cache_dir: CacheOpt = Path(".cache/embeddings"),
    no_cache: NoCacheOpt = False,
    show_models: Annotated[int, typer.Option(help="Single models listed per dataset.")] = 12,
) -> None:
    """Train strategies on a train split of recorded LLM outcomes and evaluate them, with
    baselines (every single model, random, oracle), on a held-out split: accuracy, cost,
    cost–quality curves, AIQ, cost to reach 95% of the best single model. Writes
    results.json and PNG plots per dataset and prints a table."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from orchestrator.evaluation.ensemble import print_ensembles
    from orchestrator.evaluation.harness import Harness, warm_embeddings
    from orchestrator.evaluation.report import plot, print_report, write_json
    from routers.artifacts import ArtifactStore

    names = [s.strip() for s in strategies.split(",") if s.strip()]
    options = parse_options(option)
    console = Console(width=max(Console().width, 120))
    store = ArtifactStore(_artifacts_dir(config, artifacts_dir)) if save_artifacts else None
    cache = None if no_cache else cache_dir
    for data in _datasets(dataset, data_dir, path, limit, seed):
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=err, transient=False) as progress:
            embedding_models = {o.get("embedding_model") for o in options.values()} | {None}
            for model in embedding_models:
                warm_embeddings(data, model, cache, progress)
            harness = Harness(
                data,
                test_fraction=test_fraction,
                valid_fraction=valid_fraction,
                seed=seed,
                store=store,
                options=options,
                progress=progress,
            )
            result = harness.run(names)
        folder = out / data.name
        print_report(result, console, show_models=show_models)
        print_ensembles(result, console)
        written = [write_json(result, folder / "results.json"), *plot(result, folder)]
        if "moe2" in names:  # quality vs per-query budget (orchestrator/evaluation/budgets.py)
            from orchestrator.evaluation.budgets import budget_report

            written += budget_report(harness, result, folder, console)
        console.print("[dim]wrote " + ", ".join(str(p) for p in written) + "[/dim]")
    if store is not None:
        console.print(f"[dim]artifacts saved under {store.root}/<strategy>/<version>[/dim]")


def train_command(
    strategy: Annotated[
        str, typer.Argument(help="A trainable strategy (coe, knn, threshold).")
    ] = "coe",
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset", "-d", help="routerbench, llmrouter, mmlu_pro, or jsonl (with --path)."
        ),
    ] = "routerbench",
    data_dir: DataDirOpt = None,
    path: PathOpt = None,
    option: OptionOpt = None,
    split_: Annotated[
        str,
        typer.Option(
            "--split",
            help="'train': the train side of eval's hash split (no test prompt is seen, so a "
            "later `orchestrator eval` with the same seed stays clean); 'all': every prompt.",
        ),
    ] = "train",
    test_fraction: TestFractionOpt = 0.3,
    seed: SeedOpt = 0,
    limit: LimitOpt = None,
    config: ConfigOpt = None,
    artifacts_dir: ArtifactsOpt = None,
    cache_dir: CacheOpt = Path(".cache/embeddings"),
    no_cache: NoCacheOpt = False,
    evaluate: Annotated[
        bool,
        typer.Option(
            help="Evaluate on the held-out split; metrics and plots go with the artifact."
        ),
    ] = True,
) -> None:
    """Train a strategy on recorded outcomes (or a JSONL file: --dataset jsonl --path F) and
    save it as a new artifact version — the same run a training job does
    (orchestrator.jobs.work.train_router)."""
    from pydantic import ValidationError
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from orchestrator.errors import ConfigError
    from orchestrator.jobs.work import ConsoleReporter, TrainSpec, train_router, trainable_class
    from routers.artifacts import ArtifactStore

    try:
        trainable_class(strategy)
    except ConfigError as e:
        err.print(f"[red]error[/red]: {e.message}")
        raise typer.Exit(2) from None
    if split_ not in ("train", "all"):
        raise typer.BadParameter("--split must be 'train' or 'all'")
    store = ArtifactStore(_artifacts_dir(config, artifacts_dir))
    spec = TrainSpec(
        strategy=strategy,
        dataset=dataset,
        options=parse_options(option).get(strategy, {}),
        path=str(path) if path is not None else None,
        data_dir=str(data_dir) if data_dir is not None else None,
        split="train" if split_ == "train" else "all",
        test_fraction=test_fraction,
        seed=seed,
        limit=limit,
        evaluate=evaluate,
        embedding_cache_dir=None if no_cache else str(cache_dir),
    )
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err, transient=True) as progress:
            outcome = train_router(spec, store, ConsoleReporter(progress, f"train {strategy}"))
    except ConfigError as e:
        err.print(f"[red]error[/red]: {e.message}")
        raise typer.Exit(2) from None
    except ValidationError as e:
        err.print(f"[red]error[/red]: --option {strategy}.{e.errors()[0]['loc'][0]}: {e}")
        raise typer.Exit(2) from None
    artifact = outcome.artifact
    width = shutil.get_terminal_size((100, 20)).columns
    err.print(
        f"[green]trained[/green] {strategy} {artifact.version} on {outcome.trained_rows} "
        f"{artifact.meta['dataset']['name']} prompts ({split_} split, {outcome.dropped} "
        f"incomplete rows dropped) → {artifact.path}"
    )
    for k, v in artifact.meta.get("metrics", {}).items():
        if k != "evaluation":
            err.print(f"  {k}: {v}"[:width])
    if outcome.metrics:
        m = outcome.metrics
        err.print(
            f"held-out ({m['test_rows']} prompts): accuracy {m['accuracy']:.3f} at "
            f"${m['mean_cost_usd']:.6f}/query; best single {m['best_single']} "
            f"{m['best_single_accuracy']:.3f}; oracle {m['oracle_accuracy']:.3f}; plots: "
            + ", ".join(str(p) for p in outcome.plots)
        )
    err.print(
        f"serve it with routing.strategies.{strategy}.artifact: {artifact.version} (or 'latest') "
        f"and artifacts_dir: {store.root}"
    )
