"""The ``orchestrator`` command line. Heavy imports (torch, engines) stay inside commands."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from orchestrator.evaluation.commands import eval_command, train_command

app = typer.Typer(
    help="expert-orchestrator: one OpenAI-compatible endpoint for many experts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check and describe configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config; default: the embedded demo pool."),
]
UrlOpt = Annotated[str, typer.Option(envvar="ORCHESTRATOR_URL", help="Server base URL.")]


def _load(path: Path | None, **overrides: Any) -> Any:
    from orchestrator.config import load_config
    from orchestrator.errors import ConfigError

    try:
        return load_config(path, **overrides)
    except ConfigError as e:
        err.print(f"[red]config error[/red]: {e.message}")
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning.")] = None,
) -> None:
    """Serve the OpenAI-compatible API in this process (the demo pool without --config)."""
    import logging

    import uvicorn

    from orchestrator.api import build_app
    from orchestrator.pipeline import Orchestrator

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = _load(config)
    server = cfg.server.model_copy(
        update={k: v for k, v in {"host": host, "port": port, "log_level": log_level}.items() if v}
    )
    cfg = cfg.model_copy(update={"server": server})
    logging.basicConfig(
        level=server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    err.print(
        f"serving {len(cfg.experts)} experts ({', '.join(e.name for e in cfg.experts)}) "
        f"with strategy '{cfg.routing.default_strategy}' on http://{server.host}:{server.port}"
    )
    uvicorn.run(
        build_app(Orchestrator(cfg)),
        host=server.host,
        port=server.port,
        log_level=server.log_level,
        access_log=server.log_level == "debug",
    )


@app.command()
def chat(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    model: Annotated[
        str, typer.Option(help="Expert name, 'auto' or 'router/<strategy>'.")
    ] = "auto",
    url: UrlOpt = "http://127.0.0.1:8000",
    stream: Annotated[bool, typer.Option(help="Stream tokens as they come.")] = True,
    max_tokens: Annotated[int, typer.Option(help="Completion token limit.")] = 256,
    api_key: Annotated[str | None, typer.Option(envvar="ORCHESTRATOR_API_KEY")] = None,
) -> None:
    """Ask the running server one question; prints the answer and who answered."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
            if not stream:
                r = client.post("/v1/chat/completions", json=body)
                data = r.json()
                if r.status_code >= 400:
                    err.print(f"[red]{r.status_code}[/red] {data['error']['message']}")
                    raise typer.Exit(1)
                print(data["choices"][0]["message"]["content"])
                _print_trace(data["routing"])
                return
            with client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code >= 400:
                    data = json.loads(r.read())
                    err.print(f"[red]{r.status_code}[/red] {data['error']['message']}")
                    raise typer.Exit(1)
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        err.print(f"\n[red]error[/red]: {chunk['error']['message']}")
                        raise typer.Exit(1)
                    if "routing" in chunk:
                        trace = chunk["routing"]
                    for choice in chunk.get("choices", []):
                        sys.stdout.write(choice["delta"].get("content") or "")
                        sys.stdout.flush()
                print()
                _print_trace(trace)
    except httpx.ConnectError:
        err.print(f"[red]cannot reach {url}[/red]: start the server with `orchestrator serve`")
        raise typer.Exit(1) from None


def _print_trace(trace: dict[str, Any]) -> None:
    err.print(
        f"[dim]answered by {', '.join(trace['answered_by'])} via {trace['strategy']}: "
        f"{trace['reason']}[/dim]"
    )


@app.command()
def batch(
    input_file: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT.jsonl",
            help="OpenAI batch-style JSONL: one {custom_id, method, url, body} per line.",
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Result JSONL, one line per input line.")
    ],
    config: ConfigOpt = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="Default strategy for this job (lines with model 'auto' or unknown)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Answer a JSONL file of chat requests offline, grouped by expert (docs/batching.md).

    Every line gets a result or an explicit error; each expert loads at most once per chunk,
    within the config's scheduler budget."""
    import asyncio
    import logging

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from orchestrator.batch import count_lines, job_config, run_batch
    from orchestrator.errors import ConfigError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rich.logging import RichHandler

    # Through rich, so warnings print above the progress bar instead of through it.
    logging.basicConfig(
        level="WARNING",
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=err, show_path=False)],
    )
    if not input_file.is_file():
        err.print(f"[red]no such input file[/red]: {input_file}")
        raise typer.Exit(2)
    if not output.parent.is_dir():
        err.print(f"[red]the output folder does not exist[/red]: {output.parent}")
        raise typer.Exit(2)
    cfg = _load(config)
    try:
        job_config(cfg, strategy)
    except ConfigError as e:
        err.print(f"[red]--strategy[/red]: {e.message}")
        raise typer.Exit(2) from None
    total = count_lines(input_file)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not progress,
    ) as bar:
        task = bar.add_task("batch", total=total, failed=0)
        failed = 0

        def on_line(ok: bool) -> None:
            nonlocal failed
            failed += not ok
            bar.update(task, advance=1, failed=failed)

        summary = asyncio.run(
            run_batch(cfg, input_file, output, strategy=strategy, on_line=on_line)
        )
    r, s = summary.residency, summary.scheduler
    per_expert = ", ".join(f"{e} {n}" for e, n in sorted(r.loads_by_expert.items()))
    err.print(
        f"{summary.lines} lines: {summary.ok} ok, {summary.failed} failed, "
        f"in {summary.elapsed_s:.1f} s -> {output}\n"
        f"scheduler: {r.loads} loads ({per_expert or 'none'}), {r.wakes} wakes, "
        f"{r.load_s:.1f} s loading; {s.batches} batches in {s.rounds} rounds; "
        f"peak resident: {r.max_resident_experts} experts"
    )


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="YAML config file.")]) -> None:
    """Validate a config file; errors name the setting and the fix."""
    cfg = _load(path)
    err.print(
        f"[green]ok[/green]: {len(cfg.experts)} experts, default strategy "
        f"'{cfg.routing.default_strategy}', server {cfg.server.host}:{cfg.server.port}"
    )


@config_app.command("schema")
def config_schema() -> None:
    """Print the configuration's JSON schema (every field, its default and description)."""
    from orchestrator.config import dump_schema

    print(json.dumps(dump_schema(), indent=2))


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective configuration (the demo pool without --config), secrets masked."""
    import yaml

    cfg = _load(config)
    print(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))


@app.command()
def strategies() -> None:
    """List the registered routing strategies and worker backends."""
    from routers import list_strategies
    from workers import list_backends

    print("strategies:", ", ".join(list_strategies()))
    print("backends:  ", ", ".join(list_backends()))


# Recorded-outcome evaluation and training of routing strategies (orchestrator/evaluation/).
app.command("eval")(eval_command)
app.command("train")(train_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
