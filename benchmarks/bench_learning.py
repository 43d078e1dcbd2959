"""Does the VLM learn spatial relations from simulator renders? Accuracy before and after a short
fine-tune on a fixed rendered set, with the CPU time it took (issue 4's "must show").

    python benchmarks/bench_learning.py                       # lite, 640 train / 200 + 200 held out
    python benchmarks/bench_learning.py --variants default,no-mirror,192px   # ablations, same data
    python benchmarks/bench_learning.py --train 320 --epochs 10 --every 2

Three fixed sets are rendered once by the embedded simulator at `--image-size` px (cached under
`--data-dir`, reused when present): `train` (random valid layouts of the five training rooms),
`heldout` (other layouts of the same rooms: held-out images) and `test` (layouts of the three
unseen test rooms). Each variant starts from the pretrained adapter, is evaluated on all three, then
fine-tuned `--epochs` epochs on `train` (`--every` at a time, evaluating in between). Accuracy is
the hard-negative accuracy of `evaluate` (caption above both NegCLIP negatives; chance 1/3).
Fine-tuning time is reported as wall time and as process CPU time (all threads), evaluation excluded.

Writes benchmarks/results/learning.json (or --out), learning.png next to it, and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, machine_info, main, names, pyplot, rendered_sets, save_figure

OUT = "learning.json"
#: Named adapter settings compared side by side (keywords of `build_vlm`).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-mirror": {"mirror_augment": False},
    "192px": {"image_size": 192},
    "192px-no-mirror": {"image_size": 192, "mirror_augment": False},
}


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--vlm", default="lite")
    ap.add_argument("--variants", default="default",
                    help=f"comma-separated, from {sorted(VARIANTS)}")
    ap.add_argument("--train", type=int, default=640)
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=224, help="render size (px)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--every", type=int, default=5, help="evaluate every this many epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=str(ROOT / "runs" / "bench-learning-data"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    variants = names(args.variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; allowed: {sorted(VARIANTS)}")
    if args.every < 1 or args.epochs < args.every:
        raise SystemExit("need 1 <= --every <= --epochs")
    info = machine_info()
    sets, render_s = rendered_sets({"train": args.train, "heldout": args.heldout,
                                    "test": args.test}, args.image_size, args.seed, args.data_dir)
    res: dict[str, Any] = {"vlm": args.vlm, "image_size": args.image_size, "epochs": args.epochs,
                           "seed": args.seed, "sizes": {k: len(v) for k, v in sets.items()},
                           "render_s": render_s, "machine": info, "variants": {}}
    for name in variants:
        res["variants"][name] = run_variant(name, sets, args)
    res["machine_after"] = machine_info()
    return res


def run_variant(name: str, sets: dict[str, list], args: argparse.Namespace) -> dict[str, Any]:
    from rls3.vlm import build_vlm

    kw = {**VARIANTS[name], "seed": args.seed, "progress": False}
    vlm = build_vlm(args.vlm, **kw)

    def evaluate() -> dict[str, Any]:
        t = time.perf_counter()
        row = {}
        for s, samples in sets.items():
            m = vlm.evaluate(samples)
            row[s] = {"accuracy": m.score, "loss": m.loss, "per_term": m.per_term,
                      "per_complexity": {str(k): v for k, v in m.per_complexity.items()}}
        row["eval_s"] = time.perf_counter() - t
        return row

    curve = [{"epoch": 0, "wall_s": 0.0, "cpu_s": 0.0, **evaluate()}]
    print(f"[{name}] before: " + ", ".join(f"{s} {curve[0][s]['accuracy']:.3f}" for s in sets),
          flush=True)
    wall = cpu = 0.0
    for epoch in range(args.every, args.epochs + 1, args.every):
        w0, c0 = time.perf_counter(), time.process_time()
        vlm.finetune(sets["train"], args.every)
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
        curve.append({"epoch": epoch, "wall_s": wall, "cpu_s": cpu, **evaluate()})
        print(f"[{name}] epoch {epoch}: " + ", ".join(
            f"{s} {curve[-1][s]['accuracy']:.3f}" for s in sets)
            + f" | fine-tune {wall:.0f}s wall, {cpu:.0f}s CPU", flush=True)
    return {"options": VARIANTS[name], "curve": curve}


def table(res: dict[str, Any], out: Path) -> list[str]:
    from rls3.report import wilson_interval

    n = res["sizes"]

    def after(v: dict, s: str) -> str:
        p = v["curve"][-1][s]["accuracy"]
        lo, hi = wilson_interval(p, n[s])
        return f"{p:.3f} [{lo:.2f}, {hi:.2f}]"

    lines = [f"Lite learning on rendered scenes: {n['train']} train, {n['heldout']} held-out "
             f"(train rooms), {n['test']} test-room images at {res['image_size']} px; "
             f"{res['epochs']} epochs; chance 0.333; [95% Wilson interval].", "",
             "| variant | held-out before | held-out after | test rooms before | test rooms after "
             "| train after | fine-tune wall s | fine-tune CPU s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, v in res["variants"].items():
        a, b = v["curve"][0], v["curve"][-1]
        lines.append(f"| {name} | {a['heldout']['accuracy']:.3f} | {after(v, 'heldout')} "
                     f"| {a['test']['accuracy']:.3f} | {after(v, 'test')} "
                     f"| {b['train']['accuracy']:.3f} | {b['wall_s']:.0f} | {b['cpu_s']:.0f} |")
    return lines


def figures(res: dict[str, Any], out: Path) -> list[Path]:
    """Accuracy against fine-tuning epochs, one panel per variant: `out` with .png."""
    plt = pyplot()
    variants = list(res["variants"])
    fig, axes = plt.subplots(1, len(variants), figsize=(4.2 * len(variants), 3.6), squeeze=False,
                             sharey=True)
    for ax, name in zip(axes[0], variants, strict=True):
        curve = res["variants"][name]["curve"]
        ep = [c["epoch"] for c in curve]
        for s, style in (("train", ":"), ("heldout", "-"), ("test", "--")):
            ax.plot(ep, [c[s]["accuracy"] for c in curve], style, marker="o", ms=3,
                    label={"heldout": "held-out (train rooms)", "test": "unseen test rooms",
                           "train": "train"}[s])
        ax.axhline(1 / 3, color="0.5", lw=0.8, ls="-.", label="chance")
        ax.set_title(f"{res['vlm']} — {name}")
        ax.set_xlabel(f"epoch (fine-tune CPU {curve[-1]['cpu_s']:.0f} s)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("hard-negative accuracy")
    axes[0][0].legend(fontsize=7, loc="upper left")
    return [save_figure(fig, out.with_suffix(".png"), res, dpi=120)]


if __name__ == "__main__":
    sys.exit(main(__name__))
