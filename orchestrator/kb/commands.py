"""``orchestrator kb add|list|delete|train-gate`` and ``orchestrator eval-rag``.

The ``kb`` commands talk to the knowledge store in Redis directly (the config's ``redis_url``,
``--redis-url`` or ``ORCHESTRATOR_REDIS_URL``), so they work with no server running; a server
sees the change at its next query (the store's version moved). Heavy imports stay inside.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

err = Console(stderr=True)
kb_app = typer.Typer(
    help="The knowledge store for retrieval (router/expertrag): add, list, delete documents; "
    "train the retrieval gate.",
    no_args_is_help=True,
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config (redis_url, knowledge, experts)."),
]
RedisOpt = Annotated[
    str | None,
    typer.Option("--redis-url", help="Redis of the knowledge store; default: the config's."),
]
TEXT_SUFFIXES = (".md", ".txt", ".rst", ".markdown")


def _config(config: Path | None, redis_url: str | None) -> Any:
    from orchestrator.config import load_config
    from orchestrator.errors import ConfigError

    try:
        cfg = load_config(config)
    except ConfigError as e:
        err.print(f"[red]config error[/red]: {e.message}")
        raise typer.Exit(2) from None
    if redis_url is not None:
        cfg = cfg.model_copy(update={"redis_url": redis_url})
    if cfg.redis_url is None:
        err.print(
            "[red]no Redis[/red]: the knowledge store lives in Redis; pass --redis-url, set "
            "redis_url in the config, or ORCHESTRATOR_REDIS_URL"
        )
        raise typer.Exit(2)
    return cfg


def _knowledge(cfg: Any, namespace: str | None = None) -> Any:
    from orchestrator.kb.store import KnowledgeStore
    from orchestrator.store import RedisStore

    store = RedisStore(cfg.redis_url) if namespace is None else RedisStore(cfg.redis_url, namespace)
    return KnowledgeStore(store, cfg.knowledge)


def _run(action: Any) -> Any:
    """Run ``action()``, printing an orchestrator error and exiting non-zero."""
    from orchestrator.errors import OrchestratorError

    try:
        return action()
    except OrchestratorError as e:
        err.print(f"[red]{e.error_type}[/red]: {e.message}")
        raise typer.Exit(1 if e.status_code >= 500 else 2) from None


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in TEXT_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            err.print(f"[red]no such file[/red]: {p}")
            raise typer.Exit(2)
    return out


def doc_id_for(path: Path) -> str:
    """A document id from a file name: its stem, with characters ids may not hold as '-'."""
    stem = re.sub(r"[^A-Za-z0-9._:@-]+", "-", path.stem).strip("-.")
    return stem or "doc"


@kb_app.command("add")
def kb_add(
    files: Annotated[
        list[Path],
        typer.Argument(help="Text or markdown files, or folders of them (.md .txt .rst)."),
    ],
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    doc_id: Annotated[
        str | None, typer.Option("--id", help="The document id (one file only); default: stem.")
    ] = None,
    meta: Annotated[
        list[str] | None, typer.Option("--meta", help="Metadata key=value (repeat).")
    ] = None,
) -> None:
    """Add documents (a file's id is its name without suffix: adding it again replaces it)."""
    from orchestrator.kb.store import DocumentIn

    paths = _files(files)
    if not paths:
        err.print("[red]no documents found[/red]")
        raise typer.Exit(2)
    if doc_id is not None and len(paths) != 1:
        raise typer.BadParameter("--id needs exactly one file")
    extra: dict[str, Any] = {}
    for item in meta or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--meta '{item}': expected key=value")
        extra[key.strip()] = value
    docs = [
        DocumentIn(
            p.read_text(encoding="utf-8"), doc_id or doc_id_for(p), {"source": str(p), **extra}
        )
        for p in paths
    ]
    kb = _knowledge(_config(config, redis_url))
    infos = _run(lambda: kb.add(docs))
    for i in infos:
        verb = "replaced" if i.replaced else "added"
        err.print(f"{verb} [bold]{i.id}[/bold]: {i.chunks} chunks, {i.chars} characters")
    err.print(f"knowledge store version {_run(kb.version)}")


@kb_app.command("list")
def kb_list(
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List documents in the order they were added."""
    kb = _knowledge(_config(config, redis_url))
    infos, total = _run(lambda: kb.list_documents(offset, limit))
    if as_json:
        for i in infos:
            print(json.dumps(i.as_dict()))
        return
    table = Table("id", "title", "chunks", "chars", "source")
    for i in infos:
        table.add_row(
            i.id, i.title or "", str(i.chunks), str(i.chars), str(i.metadata.get("source", ""))
        )
    Console().print(table)
    err.print(f"{len(infos)} of {total} documents (version {_run(kb.version)})")


@kb_app.command("delete")
def kb_delete(
    doc_id: Annotated[str, typer.Argument(metavar="ID", help="The document id.")],
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
) -> None:
    """Delete a document and its passages."""
    kb = _knowledge(_config(config, redis_url))
    _run(lambda: kb.delete(doc_id))
    err.print(f"deleted [bold]{doc_id}[/bold] (version {_run(kb.version)})")


@kb_app.command("train-gate")
def kb_train_gate(
    questions: Annotated[
        Path,
        typer.Argument(
            help='Labelled JSONL: {"question", "retrieve": true|false, "group"?} per line.'
        ),
    ],
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    general_per_task: Annotated[
        int,
        typer.Option(help="Also use this many LLMRouter prompts per task as 'no retrieval'."),
    ] = 0,
    data_dir: Annotated[
        Path | None, typer.Option(help="Shared data (for --general-per-task).")
    ] = None,
    c: Annotated[
        float, typer.Option("--C", help="Inverse regularisation of the classifier.")
    ] = 0.5,
    seed: Annotated[int, typer.Option()] = 0,
    artifacts_dir: Annotated[
        Path | None, typer.Option(help="Where the gate is saved; default: the config's.")
    ] = None,
) -> None:
    """Train ExpertRAG's retrieval gate against the store's current documents and save it as
    a new version under <artifacts_dir>/expertrag/ (serve it with gate: trained)."""
    from orchestrator.kb.evaluation import general_from_llmrouter, load_labelled
    from routers.artifacts import ArtifactStore

    cfg = _config(config, redis_url)
    items = load_labelled(questions)
    if general_per_task:
        items += general_from_llmrouter(_llmrouter(data_dir), general_per_task, seed=seed)
    strategy = _strategy(cfg, artifacts_dir or cfg.artifacts_dir)
    store = ArtifactStore(artifacts_dir or cfg.artifacts_dir)
    artifact = _run(
        lambda: strategy.train_gate(
            [x.question for x in items],
            [x.retrieve for x in items],
            [x.split_key for x in items],
            store=store,
            C=c,
            seed=seed,
            dataset={"name": str(questions), "rows": len(items)},
        )
    )
    err.print(f"[green]trained[/green] expertrag gate {artifact.version} → {artifact.path}")
    for k, v in artifact.meta.get("metrics", {}).items():
        err.print(f"  {k}: {v}")


def _llmrouter(data_dir: Path | None) -> Path:
    from orchestrator.errors import ConfigError
    from orchestrator.evaluation.datasets import resolve_path

    try:
        return resolve_path("llmrouter", None, data_dir)
    except ConfigError as e:
        err.print(f"[red]data[/red]: {e.message}")
        raise typer.Exit(2) from None


def _strategy(cfg: Any, artifacts_dir: Path, knowledge: Any = None, **overrides: Any) -> Any:
    from routers.expertrag import ExpertRAGStrategy

    options = {**cfg.routing.strategies.get("expertrag", {}), **overrides}
    strategy = ExpertRAGStrategy(cfg.experts, options, artifacts_dir=artifacts_dir)
    strategy.bind(cfg)
    if knowledge is not None:
        strategy.use_knowledge(knowledge)
    return strategy


# -- eval-rag ------------------------------------------------------------------------------------

_EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "kb"


def eval_rag_command(
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    corpus: Annotated[
        list[Path] | None,
        typer.Option(help="Corpus files or folders; default docs/examples/kb/brindlewave-*.md."),
    ] = None,
    questions: Annotated[Path, typer.Option(help="Labelled questions (JSONL).")] = _EXAMPLES
    / "questions.jsonl",
    data_dir: Annotated[
        Path | None, typer.Option(help="Shared data: LLMRouter prompts as general questions.")
    ] = None,
    general_per_task: Annotated[
        int, typer.Option(help="LLMRouter prompts per task (0: only the labelled file).")
    ] = 15,
    test_fraction: Annotated[
        float, typer.Option(help="Documents (and negatives) held out.")
    ] = 0.35,
    seed: Annotated[int, typer.Option()] = 0,
    c: Annotated[float, typer.Option("--C", help="Inverse regularisation of the gate.")] = 0.5,
    e2e: Annotated[
        bool, typer.Option("--e2e/--no-e2e", help="Answer test questions with the real experts.")
    ] = True,
    e2e_general: Annotated[
        int, typer.Option(help="Graded LLMRouter QA prompts added to the end-to-end run.")
    ] = 6,
    e2e_limit: Annotated[
        int | None,
        typer.Option(help="At most this many end-to-end questions (half from the store)."),
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Completion tokens per answer.")] = 48,
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results/eval-rag"),
) -> None:
    """Evaluate ExpertRAG: train the retrieval gate on a labelled set and report its precision
    and recall on held-out documents (with baselines), then answer held-out questions with the
    real expert pool (the demo pool: SmolLM2 on CPU) without retrieval, with the gate and with
    retrieval always on. The corpus goes into a scratch namespace of Redis, removed afterwards."""
    import logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level="WARNING")
    from orchestrator.kb.evaluation import (
        evaluate_gate,
        general_from_llmrouter,
        load_labelled,
        split_labelled,
    )
    from orchestrator.kb.store import DocumentIn

    cfg = _config(config, redis_url)
    files = _files(corpus) if corpus else sorted(_EXAMPLES.glob("brindlewave-*.md"))
    items = load_labelled(questions)
    if general_per_task:
        items += general_from_llmrouter(_llmrouter(data_dir), general_per_task, seed=seed)
    train, test = split_labelled(items, test_fraction, seed=seed)
    namespace = f"eo-evalrag-{uuid.uuid4().hex[:8]}"
    kb = _knowledge(cfg, namespace)
    console = Console(width=max(Console().width, 110))
    try:
        _run(
            lambda: kb.add(
                [DocumentIn(p.read_text(), doc_id_for(p), {"source": str(p)}) for p in files]
            )
        )
        err.print(
            f"corpus: {len(files)} documents, {len(kb.snapshot())} chunks; labelled: "
            f"{len(train)} train / {len(test)} test questions "
            f"({sum(x.retrieve for x in test)} need the store)"
        )
        strategy = _strategy(cfg, Path(".cache/eval-rag-artifacts"), kb)
        gate = _run(lambda: evaluate_gate(strategy, train, test, C=c, seed=seed))
        _print_gate(console, gate)
        result: dict[str, Any] = {"gate": gate, "corpus": [str(p) for p in files], "seed": seed}
        if e2e:
            extra = [x for x in test if x.group in ("llmrouter:natural_qa", "llmrouter:trivia_qa")]
            chosen = [x for x in test if not x.group.startswith("llmrouter:")] + extra[:e2e_general]
            if e2e_limit is not None:
                kb_items = [x for x in chosen if x.retrieve][: (e2e_limit + 1) // 2]
                others = [x for x in chosen if not x.retrieve][: e2e_limit - len(kb_items)]
                chosen = kb_items + others
            answers, summary = asyncio.run(_end_to_end(cfg, kb, strategy, chosen, max_tokens))
            _print_e2e(console, summary)
            result["end_to_end"] = {"summary": summary, "answers": [a.__dict__ for a in answers]}
    finally:
        _drop_namespace(kb)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"[dim]wrote {path}[/dim]")


async def _end_to_end(
    cfg: Any, kb: Any, trained: Any, items: list[Any], max_tokens: int
) -> tuple[list[Any], dict[str, Any]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from orchestrator.dispatch import ExpertPool
    from orchestrator.kb.evaluation import answer_all, summarize_answers

    strategies = {
        "no retrieval": _strategy(cfg, Path("."), kb, gate="never"),
        "gated": trained,
        "always": _strategy(cfg, Path("."), kb, gate="always"),
    }
    for name, s in strategies.items():
        if name != "gated":
            s.setup()
    pool = ExpertPool(cfg)
    await pool.start()
    try:
        with Progress(
            TextColumn("answering"), BarColumn(), MofNCompleteColumn(), console=err
        ) as bar:
            task = bar.add_task("e2e", total=len(items) * len(strategies))
            answers = await answer_all(
                pool,
                strategies,
                items,
                max_tokens=max_tokens,
                on_answer=lambda _: bar.advance(task),
            )
    finally:
        await pool.stop()
    return answers, summarize_answers(answers)


def _drop_namespace(kb: Any) -> None:
    try:
        client = kb._redis()
        keys = list(client.scan_iter(match=f"{kb.redis.namespace}:*", count=500))
        if keys:
            client.delete(*keys)
    except Exception as e:  # the eval's numbers are out already; say what is left behind
        err.print(f"[yellow]could not remove the scratch keys {kb.redis.namespace}:*[/yellow]: {e}")
    kb.close()


def _print_gate(console: Console, gate: dict[str, Any]) -> None:
    t = Table(title="Retrieval gate on held-out documents and questions")
    for col in ("gate", "precision", "recall", "F1", "retrieval rate", "on KB questions",
                "on general", "threshold"):  # fmt: skip
        t.add_column(col)
    for name, key in (("trained (expertrag)", "gate"), ("best cosine only", "similarity_only"),
                      ("always (standard RAG)", "always")):  # fmt: skip
        m = gate[key]
        t.add_row(
            name,
            f"{m['precision']:.3f}",
            f"{m['recall']:.3f}",
            f"{m['f1']:.3f}",
            f"{m['retrieval_rate']:.3f}",
            f"{m['retrieval_rate_positives']:.3f}",
            f"{m['retrieval_rate_negatives']:.3f}",
            f"{m['threshold']:.3f}",
        )
    console.print(t)
    m = gate["gate"]
    groups = ", ".join(f"{k} {v:.2f}" for k, v in m["by_group"].items())
    console.print(f"retrieval rate by kind (trained gate): {groups}")
    cost = gate["cost"]
    console.print(
        f"test: {m['n']} questions ({m['positives']} need the store); passages' prompt tokens "
        f"{cost['context_tokens_if_always'] - cost['context_tokens_saved']:.0f} with the gate vs "
        f"{cost['context_tokens_if_always']:.0f} always-on ({cost['context_tokens_saved']:.0f} "
        f"saved); ms/query {gate['ms_per_query']}; "
        f"training out-of-fold F1 {gate['training_metrics'].get('oof_f1')}"
    )


def _print_e2e(console: Console, summary: dict[str, Any]) -> None:
    t = Table(title="End to end with the real expert pool (greedy)")
    for col in ("condition", "KB correct", "KB retrieved", "general correct",
                "general retrieved", "prompt tokens (KB / general)", "ms/answer"):  # fmt: skip
        t.add_column(col)
    for condition, part in summary.items():
        kb, gen = part["kb"], part["general"]
        t.add_row(
            condition,
            f"{kb['correct']}/{kb['graded']}",
            f"{kb['retrieval_rate']:.2f}",
            f"{gen['correct']}/{gen['graded']}",
            f"{gen['retrieval_rate']:.2f}",
            f"{kb['mean_prompt_tokens']:.0f} / {gen['mean_prompt_tokens']:.0f}",
            f"{(kb['mean_latency_ms'] + gen['mean_latency_ms']) / 2:.0f}",
        )
    console.print(t)
