"""Does replaying earlier batches make the VLM learn inside the loop? The loop's fine-tuning
schedule on a fixed stream of renders, with and without `loop.replay`, side by side.

    python benchmarks/bench_replay.py                          # 3 seeds, 6 iterations of 128
    python benchmarks/bench_replay.py --seeds 0 --iterations 3 --batch 64 --k 2   # a smoke run

Each iteration takes the next `--batch` renders of the training rooms (the same stream for both
variants of a seed; order shuffled per seed), fine-tunes `--k` epochs on them (`no-replay`: the
paper's rule) or on them plus every earlier batch (`replay`: `rls3.replay.SampleReplay` with the
quick preset's capacity and fraction), and evaluates the unseen test rooms and held-out layouts
of the training rooms. Reported against cumulative optimizer steps and fine-tuning CPU seconds
(process time, all threads; evaluation excluded). The renders come from bench_learning's cached
sets (`_common.rendered_sets`, under `--data-dir`), rendered once when absent.

Writes benchmarks/results/replay.json (or --out), replay.png next to it, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, ints, machine_info, main, names, pyplot, rendered_sets, save_figure

OUT = "replay.json"
#: no-replay: the paper's rule; replay: the quick preset's; no-replay-same-steps: the paper's rule
#: with as many optimizer steps per iteration as replay takes (K * i epochs in iteration i), to
#: tell "more data" from "more steps"
VARIANTS = ("no-replay", "replay", "no-replay-same-steps")


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--vlm", default="lite")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default="no-replay,replay",
                    help=f"comma-separated, from {list(VARIANTS)}")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--batch", type=int, default=128, help="new samples per iteration")
    ap.add_argument("--k", type=int, default=6, help="epochs per iteration")
    ap.add_argument("--heldout", type=int, default=150)
    ap.add_argument("--test", type=int, default=150)
    ap.add_argument("--image-size", type=int, default=224, help="render size (px)")
    ap.add_argument("--data-dir", default=str(ROOT / "runs" / "bench-learning-data"))
    ap.add_argument("--merge", metavar="OTHER.json",
                    help="only add OTHER.json's variants to --out (same settings) and redraw")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.merge:
        return merge(Path(args.out), Path(args.merge))
    seeds = ints(args.seeds)
    variants = names(args.variants)
    if not variants or set(variants) - set(VARIANTS):
        raise SystemExit(f"--variants must name some of {list(VARIANTS)}, got {args.variants!r}")
    if not seeds or args.iterations < 1 or args.batch < 1 or args.k < 1:
        raise SystemExit("need at least one seed and --iterations, --batch, --k >= 1")
    info = machine_info()
    # bench_learning's sets (seed 0), the training stream as long as every iteration needs
    sets, render_s = rendered_sets({"train": args.iterations * args.batch,
                                    "heldout": args.heldout, "test": args.test},
                                   args.image_size, 0, args.data_dir)
    res: dict[str, Any] = {"vlm": args.vlm, "iterations": args.iterations, "batch": args.batch,
                           "k": args.k, "seeds": seeds, "render_s": render_s,
                           "sizes": {k: len(v) for k, v in sets.items()}, "machine": info,
                           "runs": {v: {} for v in variants}}
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(len(sets["train"]))
        stream = [sets["train"][int(i)] for i in order]
        for v in variants:
            res["runs"][v][str(seed)] = run_variant(v, seed, stream, sets, args)
    res["machine_after"] = machine_info()
    return res


def run_variant(variant: str, seed: int, stream: list, sets: dict[str, list],
                args: argparse.Namespace) -> dict[str, Any]:
    from rls3.config import preset
    from rls3.replay import SampleReplay
    from rls3.vlm import build_vlm

    vlm = build_vlm(args.vlm, seed=seed, progress=False)
    rc = preset("quick").loop.replay
    replay = SampleReplay(rc.capacity, rc.fraction, seed) if variant == "replay" else None

    def evaluate() -> dict[str, float]:
        return {s: vlm.evaluate(sets[s]).score for s in ("test", "heldout")}

    curve = [{"iteration": 0, "steps": 0, "cpu_s": 0.0, "wall_s": 0.0, **evaluate()}]
    steps, cpu, wall = 0, 0.0, 0.0
    for it in range(1, args.iterations + 1):
        batch = stream[(it - 1) * args.batch: it * args.batch]
        replayed = replay.draw() if replay is not None else []
        epochs = args.k * it if variant == "no-replay-same-steps" else args.k
        w0, c0 = time.perf_counter(), time.process_time()
        losses = vlm.finetune(batch + replayed, epochs)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        steps += len(losses)
        if replay is not None:
            replay.add(it, batch)
        curve.append({"iteration": it, "steps": steps, "cpu_s": cpu, "wall_s": wall,
                      "set": len(batch) + len(replayed), **evaluate()})
        print(f"[{variant} seed {seed}] iteration {it}: {len(batch)}+{len(replayed)} samples, "
              f"{steps} steps, {cpu:.0f} s CPU: test {curve[-1]['test']:.3f}, held-out "
              f"{curve[-1]['heldout']:.3f}", flush=True)
    return {"curve": curve}


def table(res: dict[str, Any], out: Path) -> list[str]:
    from rls3.report import wilson_interval

    n = res["sizes"]["test"]
    lines = [f"Fine-tuning schedule of the loop on a fixed stream of renders: {res['iterations']} "
             f"iterations of {res['batch']} new samples, K = {res['k']} epochs, {res['vlm']}; "
             f"test = {n} layouts of the unseen test rooms (chance 0.333). Mean over seeds "
             f"{res['seeds']} (each seed: [95% Wilson interval] of its final score).", "",
             "| variant | test before | test final (mean ± std) | per seed | held-out final | "
             "optimizer steps | fine-tune CPU s |", "|---|---|---|---|---|---|---|"]
    for v in VARIANTS:
        runs = res["runs"].get(v)
        if not runs:
            continue
        if v in res.get("merged", {}):
            v = f"{v} (separate run: `{res['merged'][v]}`)"
        first = [r["curve"][0]["test"] for r in runs.values()]
        last = [r["curve"][-1] for r in runs.values()]
        cis = [wilson_interval(c["test"], n) for c in last]
        per_seed = ", ".join(f"{c['test']:.3f} [{lo:.2f}, {hi:.2f}]"
                             for c, (lo, hi) in zip(last, cis, strict=True))
        lines.append(f"| {v} | {np.mean(first):.3f} | {np.mean([c['test'] for c in last]):.3f} ± "
                     f"{np.std([c['test'] for c in last]):.3f} | {per_seed} | "
                     f"{np.mean([c['heldout'] for c in last]):.3f} | {last[0]['steps']} | "
                     f"{np.mean([c['cpu_s'] for c in last]):.0f} |")
    return lines


def figures(res: dict[str, Any], out: Path) -> list[Path]:
    """Test-room accuracy against optimizer steps and fine-tuning CPU seconds, mean ± std over
    seeds: `out` with .png."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for j, v in enumerate(VARIANTS):
        runs = list(res["runs"].get(v, {}).values())
        if not runs:
            continue
        for ax, key in zip(axes, ("steps", "cpu_s"), strict=True):
            x = np.mean([[c[key] for c in r["curve"]] for r in runs], axis=0)
            y = np.array([[c["test"] for c in r["curve"]] for r in runs])
            ax.plot(x, y.mean(0), marker="o", ms=3, color=f"C{j}", label=f"{v} (test rooms)")
            ax.fill_between(x, y.mean(0) - y.std(0), y.mean(0) + y.std(0), color=f"C{j}",
                            alpha=0.2)
    for ax, label in zip(axes, ("fine-tuning optimizer steps (cumulative)",
                                "fine-tuning CPU seconds (cumulative)"), strict=True):
        ax.axhline(1 / 3, color="0.5", lw=0.8, ls="-.", label="chance")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test-room accuracy (mean ± std over seeds)")
    axes[0].legend(fontsize=8)
    return [save_figure(fig, out.with_suffix(".png"), res, dpi=120)]


def merge(into: Path, other: Path) -> dict[str, Any]:
    """`into`'s result with the variants of result file `other` (same stream and settings)
    added, noting the command that measured them (written back to `into` by `main`, with the
    figure redrawn)."""
    res, add = json.loads(into.read_text()), json.loads(other.read_text())
    for key in ("iterations", "batch", "k", "seeds", "sizes", "vlm"):
        if res[key] != add[key]:
            raise SystemExit(f"cannot merge {other}: {key} differs ({add[key]} vs {res[key]})")
    for v, runs in add["runs"].items():
        res["runs"][v] = runs
        res.setdefault("merged", {})[v] = add["command"]
    return res


if __name__ == "__main__":
    sys.exit(main(__name__))
