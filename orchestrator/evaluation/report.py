"""Presenting an :class:`~.harness.EvalResult`: a rich table, a JSON file and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orchestrator.evaluation.harness import EvalResult
from orchestrator.evaluation.metrics import Point


def _usd(x: float | None) -> str:
    if x is None:
        return "not reached"
    return f"${x:,.4f}" if x >= 0.01 else f"${x:.6f}"


def _knob(r_knob: str | None, value: float | None) -> str:
    if r_knob is None or value is None:
        return "—"
    return f"{r_knob}={value:g}"


def print_report(result: EvalResult, console: Console, *, show_models: int = 12) -> None:
    d = result.dataset
    s = result.splits
    console.print(
        f"\n[bold]{d['name']}[/bold] — {s['rows']} prompts with complete records "
        f"({d['dropped_incomplete_rows']} dropped), {len(d['models'])} models; "
        f"train {s['train']} (fit {s['fit']} + valid {s['valid']}), test {s['test']}"
    )
    console.print(f"[dim]cost: {d['cost_source']}[/dim]")
    for note in d.get("notes", []):
        console.print(f"[dim]note: {note}[/dim]")
    best = result.singles[result.best_single]
    table = Table(
        title=f"{d['name']} · held-out test split · target = 95% of best single "
        f"({result.target_accuracy:.3f})",
        title_justify="left",
    )
    table.add_column("router", no_wrap=True)
    table.add_column("operating point", overflow="fold")
    for col in ("accuracy", "total cost", "cost/query", "AIQ", "cost to 95%", "decisions/s"):
        table.add_column(col, justify="right")

    def row(
        name: str, knob: str, p: Point, aiq: float | None, to_target: float | None, dps: str
    ) -> None:
        table.add_row(
            name,
            knob,
            f"{p.accuracy:.3f}",
            _usd(p.total_cost),
            _usd(p.mean_cost),
            "—" if aiq is None else f"{aiq:.3f}",
            _usd(to_target) if to_target is not None or aiq is not None else "—",
            dps,
        )

    for r in result.strategies:
        dps = f"{r.timings.get('decisions_per_s', 0):,.0f}"
        row(r.name, _knob(r.knob, r.chosen_knob), r.headline, r.aiq, r.cost_to_target, dps)
    table.add_section()
    row("best single model", result.best_single, best, None, None, "")
    table.add_row(
        "single models, mixed",
        "hull of all models",
        "",
        "",
        "",
        f"{result.singles_aiq:.3f}",
        _usd(result.singles_cost_to_target),
        "",
    )
    row("oracle", "cheapest correct model", result.oracle, None, None, "")
    console.print(table)

    models = Table(title=f"{d['name']} · single models on test", title_justify="left")
    for col in ("model", "accuracy", "cost/query"):
        models.add_column(col, justify="left" if col == "model" else "right")
    ranked = sorted(result.singles.items(), key=lambda kv: -kv[1].accuracy)
    for m, p in ranked[:show_models]:
        models.add_row(m, f"{p.accuracy:.3f}", _usd(p.mean_cost))
    if len(ranked) > show_models:
        models.add_row(f"… {len(ranked) - show_models} more in results.json", "", "")
    console.print(models)


def write_json(result: EvalResult, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.as_dict(), indent=2, default=float))
    return path


def plot(result: EvalResult, out_dir: Path) -> list[Path]:
    """``cost_quality.png`` (every operating point, log cost) and ``hulls.png`` (the
    non-decreasing convex hulls AIQ integrates, linear cost)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    name = result.dataset["name"]
    n = result.splits["test"]
    written = []

    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    for m, p in result.singles.items():
        ax.scatter(p.mean_cost, p.accuracy, color="grey", s=18, zorder=2)
        ax.annotate(
            m.split("/")[-1],
            (p.mean_cost, p.accuracy),
            fontsize=6,
            color="dimgrey",
            xytext=(3, 2),
            textcoords="offset points",
        )
    ax.scatter(
        result.oracle.mean_cost,
        result.oracle.accuracy,
        marker="*",
        s=160,
        color="gold",
        edgecolor="black",
        label="oracle",
        zorder=4,
    )
    for r in result.strategies:
        pts = sorted(r.curve, key=lambda p: p.mean_cost)
        line = ax.plot(
            [p.mean_cost for p in pts],
            [p.accuracy for p in pts],
            marker="o",
            ms=3,
            lw=1.2,
            label=f"{r.name} (AIQ {r.aiq:.3f})",
            zorder=3,
        )[0]
        ax.scatter(
            r.headline.mean_cost,
            r.headline.accuracy,
            s=90,
            facecolor="none",
            edgecolor=line.get_color(),
            linewidth=2,
            zorder=5,
        )
    ax.axhline(
        result.target_accuracy,
        color="red",
        lw=0.8,
        ls=":",
        label=f"95% of best single ({result.target_accuracy:.3f})",
    )
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per query (USD, log scale)")
    ax.set_ylabel("accuracy (mean recorded score)")
    ax.set_title(
        f"{name}: cost–quality on the held-out split ({n} prompts); "
        "circles = knob chosen on validation",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = out_dir / "cost_quality.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    for r in result.strategies:
        hull = [*r.hull, [result.c_max, r.hull[-1][1]]] if r.hull else []
        ax.plot(
            [h[0] / n for h in hull],
            [h[1] for h in hull],
            marker="x",
            lw=1.4,
            label=f"{r.name} AIQ {r.aiq:.3f}",
        )
    singles = [*result.singles_hull, [result.c_max, result.singles_hull[-1][1]]]
    ax.plot(
        [h[0] / n for h in singles],
        [h[1] for h in singles],
        ls="--",
        color="grey",
        label=f"single models AIQ {result.singles_aiq:.3f}",
    )
    ax.set_xlim(0, result.c_max / n * 1.02)
    ax.set_xlabel("mean cost per query (USD); AIQ integrates from 0 to the largest cost")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{name}: non-decreasing convex hulls (RouterBench AIQ)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = out_dir / "hulls.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
    return written
