"""``orchestrator profile``: measure the latency (and energy, where the hardware tells) of live
experts and write them into a copy of the configuration as each expert's ``profile``.

For each expert: build its backend, load it, stream one warm-up answer, then ``runs`` short
greedy answers of at most ``max_tokens`` tokens to a fixed prompt, and take medians:

* ``ttft_ms`` — from the call to the first streamed text. The transformers backend's streamer
  releases text at word boundaries, so this includes the first word's token or two; it also
  includes prefill of the expert's system prompt and the short test prompt (longer prompts
  take longer to prefill).
* ``ms_per_output_token`` — (last text − first text) / (completion tokens − 1).
* ``energy_j_per_token`` — only where an energy counter exists: Intel RAPL package zones
  (``/sys/class/powercap/intel-rapl:N/energy_uj``), read before and after the measured runs,
  divided by the tokens generated. RAPL counts the whole CPU package (every process, idle power
  included), so on a shared machine this is an upper bound for the expert. Where RAPL is absent
  or unreadable (VMs, containers, non-Intel CPUs, GPUs — use ``nvidia-smi``/NVML there), the
  configured value is kept and marked ``energy_source: config``.

The output YAML is the input with each measured expert's ``profile`` replaced (``source:
measured``) and is validated with :func:`~orchestrator.config.load_config` before the command
returns. Experts on the same model share one loaded copy (transformers backend), so measuring
several of them loads it once. Runs happen one at a time: concurrent load on the machine (other
processes) inflates the numbers, which is why the medians and the machine's load average are
printed with them.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

RAPL_ROOT = Path("/sys/class/powercap")
PROMPT = "Count from one to forty in words, separated by commas."

err = Console(stderr=True)


@dataclass
class Measured:
    """One expert's measurements (medians over the runs)."""

    name: str
    ttft_ms: float
    ms_per_output_token: float
    energy_j_per_token: float | None
    runs: int
    tokens: list[int] = field(default_factory=list)

    def profile(self, configured: dict[str, Any]) -> dict[str, Any]:
        """The ``profile`` section to write: measured latency; energy measured or kept."""
        out = {
            "ttft_ms": round(self.ttft_ms, 2),
            "ms_per_output_token": round(self.ms_per_output_token, 3),
            "energy_j_per_token": configured.get("energy_j_per_token", 0.0),
            "source": "measured",
            "energy_source": "config",
        }
        if self.energy_j_per_token is not None:
            out["energy_j_per_token"] = round(self.energy_j_per_token, 4)
            out["energy_source"] = "measured"
        return out


def rapl_zones(root: Path = RAPL_ROOT) -> list[Path]:
    """Readable top-level RAPL package counters (``intel-rapl:N``; sub-zones such as
    ``intel-rapl:N:M`` are parts of a package and would count twice)."""
    zones = []
    for zone in sorted(root.glob("intel-rapl:*")):
        if zone.name.count(":") != 1:
            continue
        counter = zone / "energy_uj"
        try:
            int(counter.read_text())
        except (OSError, ValueError):
            continue
        zones.append(counter)
    return zones


def read_energy_j(zones: list[Path]) -> float | None:
    if not zones:
        return None
    try:
        return sum(int(z.read_text()) for z in zones) / 1e6
    except (OSError, ValueError):
        return None


async def measure_expert(backend: Any, runs: int, max_tokens: int, zones: list[Path]) -> Measured:
    """Warm up once, then time ``runs`` streamed answers (see the module docstring)."""
    from orchestrator.dispatch import build_request
    from orchestrator.types import Message, Query, SamplingParams

    query = Query((Message("user", PROMPT),), SamplingParams(max_tokens=max_tokens))
    request = build_request(backend.expert, query)
    await backend.load()
    await _one(backend, request)
    ttfts, per_token, tokens = [], [], []
    energy_start = read_energy_j(zones)
    for _ in range(runs):
        ttft, total, n = await _one(backend, request)
        ttfts.append(ttft)
        tokens.append(n)
        if n > 1:
            per_token.append((total - ttft) / (n - 1))
    energy_end = read_energy_j(zones)
    energy = None
    if energy_start is not None and energy_end is not None and sum(tokens) > 0:
        used = energy_end - energy_start
        if used >= 0:  # the counter wraps around; skip a run that straddles it
            energy = used / sum(tokens)
    return Measured(
        backend.expert.name,
        statistics.median(ttfts),
        statistics.median(per_token) if per_token else 0.0,
        energy,
        runs,
        tokens,
    )


async def _one(backend: Any, request: Any) -> tuple[float, float, int]:
    """(ms to first text, ms to the end, completion tokens) of one streamed answer."""
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    pieces = 0
    async for delta in backend.stream(request):
        if delta.text and first is None:
            first = time.perf_counter()
        pieces += bool(delta.text)
        if delta.usage is not None:
            tokens = delta.usage.completion_tokens
    end = time.perf_counter()
    first = first if first is not None else end
    return (first - start) * 1000, (end - start) * 1000, tokens or pieces


async def profile_experts(
    experts: list[Any], runs: int, max_tokens: int
) -> tuple[list[Measured], dict[str, str]]:
    """Measure each expert in turn; returns the measurements and the failures by name."""
    from workers import create_backend

    zones = rapl_zones()
    measured, failed = [], {}
    backends = []
    try:
        for expert in experts:
            try:
                backend = create_backend(expert)
                backends.append(backend)
                measured.append(await measure_expert(backend, runs, max_tokens, zones))
            except Exception as e:
                failed[expert.name] = f"{type(e).__name__}: {e}"
    finally:
        for backend in backends:
            try:
                await backend.unload()
            except Exception as e:
                failed.setdefault(backend.expert.name, f"unload: {type(e).__name__}: {e}")
    return measured, failed


def profiled_config(raw: dict[str, Any], measured: list[Measured]) -> dict[str, Any]:
    """A copy of the raw configuration with each measured expert's ``profile`` replaced."""
    by_name = {m.name: m for m in measured}
    out = dict(raw)
    experts = []
    for e in raw.get("experts", []):
        e = dict(e)
        m = by_name.get(e.get("name", ""))
        if m is not None:
            e["profile"] = m.profile(dict(e.get("profile") or {}))
        experts.append(e)
    out["experts"] = experts
    return out


def profile_command(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML config; default: the embedded demo pool."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Where to write the profiled YAML; default <config>.profiled.yaml."
        ),
    ] = None,
    expert: Annotated[
        list[str] | None, typer.Option("--expert", "-e", help="Only these experts (repeat).")
    ] = None,
    runs: Annotated[int, typer.Option(min=1, help="Measured answers per expert.")] = 3,
    max_tokens: Annotated[int, typer.Option(min=2, help="Tokens per measured answer.")] = 32,
) -> None:
    """Measure live experts' latency (time to first token, ms per output token) and energy
    where the hardware exposes it (Intel RAPL), and write them into a new YAML config with
    profile.source: measured."""
    from orchestrator.config import load_config
    from orchestrator.demo import demo_config_dict
    from orchestrator.errors import ConfigError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        cfg = load_config(config)
    except ConfigError as e:
        err.print(f"[red]config error[/red]: {e.message}")
        raise typer.Exit(2) from None
    raw: dict[str, Any] = (
        yaml.safe_load(config.read_text()) if config is not None else demo_config_dict()
    )
    names = [e.name for e in cfg.experts]
    unknown = sorted(set(expert or []) - set(names))
    if unknown:
        err.print(f"[red]error[/red]: unknown expert(s) {unknown}; valid: {', '.join(names)}")
        raise typer.Exit(2)
    chosen = [e for e in cfg.experts if not expert or e.name in expert]
    target = out or (
        config.with_suffix(".profiled.yaml") if config is not None else Path("demo.profiled.yaml")
    )
    zones = rapl_zones()
    err.print(
        f"profiling {len(chosen)} expert(s): {runs} runs of ≤{max_tokens} tokens each; energy: "
        + (
            f"measured from RAPL ({', '.join(str(z.parent.name) for z in zones)}; whole package)"
            if zones
            else f"no readable RAPL counter under {RAPL_ROOT}: kept from config"
        )
    )
    measured, failed = asyncio.run(profile_experts(chosen, runs, max_tokens))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = Table(title=f"measured profiles (median of {runs}; load average {load:.1f})")
    for col in ("expert", "ttft ms", "ms/token", "J/token", "tokens per run"):
        table.add_column(col, justify="left" if col == "expert" else "right")
    for m in measured:
        energy = "from config" if m.energy_j_per_token is None else f"{m.energy_j_per_token:.3f}"
        table.add_row(
            m.name,
            f"{m.ttft_ms:.1f}",
            f"{m.ms_per_output_token:.2f}",
            energy,
            ", ".join(map(str, m.tokens)),
        )
    Console().print(table)
    for name, reason in failed.items():
        err.print(f"[red]failed[/red] {name}: {reason}")
    if measured:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(profiled_config(raw, measured), sort_keys=False))
        try:
            load_config(target)
        except ConfigError as e:
            err.print(f"[red]the written config does not validate[/red]: {e.message}")
            raise typer.Exit(1) from None
        err.print(f"wrote {target}")
    if failed or not measured:
        raise typer.Exit(1)
