"""``orchestrator jobs …``: training jobs and router versions on a running server (httpx).

The server is ``--url`` (or ``$ORCHESTRATOR_URL``), the key ``--api-key`` (or
``$ORCHESTRATOR_API_KEY``, a key with the ``admin`` scope). Errors print the server's message
and exit 1; ``orchestrator train`` runs the same training in this process instead.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

app = typer.Typer(
    help="Router-training jobs and router versions on a running server (admin API).",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)

UrlOpt = Annotated[
    str, typer.Option(envvar="ORCHESTRATOR_URL", help="Server base URL ($ORCHESTRATOR_URL).")
]
KeyOpt = Annotated[
    str | None,
    typer.Option(envvar="ORCHESTRATOR_API_KEY", help="Admin key ($ORCHESTRATOR_API_KEY)."),
]
DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")


def _call(
    url: str, api_key: str | None, method: str, path: str, body: Any = None, timeout: float = 60
) -> Any:
    """The response's JSON (or bytes for a PNG); prints the server's error and exits 1."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.request(method, url + path, json=body, headers=headers, timeout=timeout)
    except httpx.TransportError as e:
        err.print(f"[red]cannot reach {url}[/red]: {e}")
        raise typer.Exit(1) from None
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:500]
        err.print(f"[red]{r.status_code}[/red] {message}")
        raise typer.Exit(1)
    if r.headers.get("content-type", "").startswith("image/"):
        return r.content
    return r.json()


def parse_option_items(strategy: str, items: list[str] | None) -> dict[str, Any]:
    """``["cost_weight=0.5", "coe.C=2"]`` → ``{"cost_weight": 0.5, "C": 2}`` (YAML values; a
    ``<strategy>.`` prefix is allowed, as in ``orchestrator train``)."""
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix(f"{strategy}.")
        if not sep or not key or "." in key:
            raise typer.BadParameter(f"'{item}': expected <option>=<value>")
        options[key] = yaml.safe_load(value)
    return options


def _summary(job: dict[str, Any]) -> str:
    m = job.get("metrics") or {}
    bits = [f"{job['id']}  {job['status']}  {job['strategy']}"]
    if job["status"] == "running":
        bits.append(f"{100 * job.get('progress', 0):.0f}% {job.get('stage', '')}")
    if job.get("version"):
        bits.append(job["version"])
    if "accuracy" in m:
        bits.append(f"accuracy {m['accuracy']:.3f} at ${m['mean_cost_usd']:.6f}/query")
    if job.get("error"):
        bits.append(f"error: {job['error']}")
    return "  ".join(bits)


@app.command("submit")
def submit(
    strategy: Annotated[str, typer.Argument(help="A trainable strategy: coe, knn, threshold.")],
    dataset: Annotated[
        str, typer.Option("--dataset", "-d", help="routerbench, llmrouter, mmlu_pro or jsonl.")
    ] = "routerbench",
    path: Annotated[
        str | None, typer.Option(help="The dataset's path on the server (default: its data_dir).")
    ] = None,
    jsonl: Annotated[
        Path | None,
        typer.Option(help="Upload this JSONL file (prompt, category, scores, costs per line)."),
    ] = None,
    label: Annotated[str | None, typer.Option(help="jsonl: the dataset's name.")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="Strategy option, e.g. cost_weight=0.5 (repeat)."),
    ] = None,
    split: Annotated[str, typer.Option(help="train (evaluate on held-out) or all.")] = "train",
    test_fraction: Annotated[float, typer.Option(help="Share held out for evaluation.")] = 0.3,
    seed: Annotated[int, typer.Option(help="Salt of the hash splits.")] = 0,
    limit: Annotated[int | None, typer.Option(help="Use at most this many prompts.")] = None,
    wait: Annotated[bool, typer.Option(help="Follow it with a progress bar until done.")] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """Queue a training job; prints its id (and follows it with --wait)."""
    spec: dict[str, Any] = {"name": "jsonl" if jsonl is not None else dataset}
    if path is not None:
        spec["path"] = path
    if label is not None:
        spec["label"] = label
    if jsonl is not None:
        if not jsonl.is_file():
            raise typer.BadParameter(f"{jsonl} is not a file", param_hint="--jsonl")
        spec["jsonl"] = jsonl.read_text(encoding="utf-8")
    body = {
        "strategy": strategy,
        "options": parse_option_items(strategy, option),
        "dataset": spec if len(spec) > 1 else spec["name"],
        "split": split,
        "test_fraction": test_fraction,
        "seed": seed,
        "limit": limit,
    }
    job = _call(url, api_key, "POST", "/admin/jobs", body)
    print(job["id"])
    if wait:
        job = _follow(url, api_key, job["id"])
        err.print(_summary(job))
        if job["status"] != "succeeded":
            raise typer.Exit(1)


def _follow(url: str, api_key: str | None, job_id: str, poll_s: float = 1.0) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err) as bar:
        task = bar.add_task(job_id, total=1.0)
        while True:
            job: dict[str, Any] = _call(url, api_key, "GET", f"/admin/jobs/{job_id}?logs=0")
            bar.update(
                task,
                completed=job.get("progress", 0.0),
                description=f"{job_id} {job['status']}: {job.get('stage', '')}",
            )
            if job["status"] in TERMINAL:
                return job
            time.sleep(poll_s)


@app.command("list")
def list_jobs(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """Jobs, newest first: id, status, strategy, progress or version and accuracy."""
    path = "/admin/jobs" + (f"?status={status}" if status else "")
    for job in _call(url, api_key, "GET", path)["data"]:
        out.print(_summary(job), highlight=False)


@app.command("show")
def show(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    logs: Annotated[int, typer.Option(help="Log lines to show (newest).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="The raw JSON.")] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """One job: status, progress, metrics and the tail of its log."""
    job = _call(url, api_key, "GET", f"/admin/jobs/{job_id}?logs={logs}")
    if as_json:
        print(json.dumps(job, indent=2))
        return
    out.print(_summary(job), highlight=False)
    for key, value in (job.get("metrics") or {}).items():
        out.print(f"  {key}: {value}", highlight=False)
    for line in job.get("logs", []):
        out.print(f"  | {line}", highlight=False, markup=False)


@app.command("cancel")
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """Cancel a queued or running job."""
    out.print(_summary(_call(url, api_key, "POST", f"/admin/jobs/{job_id}/cancel")))


@app.command("plot")
def plot(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the PNG.")],
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """Download the job's cost–quality plot."""
    output.write_bytes(_call(url, api_key, "GET", f"/admin/jobs/{job_id}/plot"))
    err.print(f"wrote {output}")


@app.command("routers")
def routers(url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """Trained versions per strategy; * marks the promoted one."""
    for r in _call(url, api_key, "GET", "/admin/routers")["data"]:
        versions = " ".join(v["version"] + ("*" if v["promoted"] else "") for v in r["versions"])
        out.print(
            f"{r['strategy']}: {versions or 'no versions'}  (promoted: {r['promoted'] or '-'}, "
            f"serving here: {r['serving'] or '-'}, configured: {r['configured_artifact']})",
            highlight=False,
        )


@app.command("promote")
def promote(
    strategy: Annotated[str, typer.Argument(help="The strategy.")],
    version: Annotated[str, typer.Argument(help="A saved version ('v0003') or 'latest'.")],
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """Serve VERSION of STRATEGY on every replica, without a restart."""
    r = _call(url, api_key, "POST", f"/admin/routers/{strategy}/promote", {"version": version})
    out.print(f"{strategy}: {r['previous'] or '-'} → {r['promoted']}", highlight=False)


@app.command("rollback")
def rollback(
    strategy: Annotated[str, typer.Argument(help="The strategy.")],
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """Serve the version promoted before the current one."""
    r = _call(url, api_key, "POST", f"/admin/routers/{strategy}/rollback")
    out.print(f"{strategy}: {r['previous']} → {r['promoted']}", highlight=False)
