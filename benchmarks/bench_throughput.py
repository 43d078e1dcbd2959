"""Throughput, each side by side with its raw counterpart in the same run:

  env steps with rendering  vs  raw renders of the same layouts   (bench_render.py)
  VLM evaluate / fine-tune  vs  a bare forward of the same model   (bench_vlm.py)
  Unity bridge env steps    vs  the embedded backend               (bench_bridge.py)

    python benchmarks/bench_throughput.py [--fast] [--size 224] [--out benchmarks/results/throughput.json]

The three benchmarks do the measuring, each run as on its own (`_common.run_script`: a child
process); this collects their headline numbers and ratios into one record.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import machine_info, main, pyplot, run_script, save_figure

OUT = "throughput.json"


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--size", type=int, default=224)


def headline(out: dict) -> list[dict]:
    """Headline rows (measured, raw counterpart, ratio) from the three benchmarks' results."""
    r, v, b = out["render"], out["vlm"], out["bridge"]
    te = sum(x["valid"] / x["env_valid_fps"] for x in r["rows"] if x["env_valid_fps"])
    tr = sum(x["valid"] / x["raw_render_fps"] for x in r["rows"] if x["raw_render_fps"])
    nv = sum(x["valid"] for x in r["rows"])
    steps = sum(x["steps"] for x in r["rows"])
    bh = b["headline"]
    return [
        {"what": "env, valid (rendered) frames/s", "value": nv / te if te else None,
         "raw": "raw render frames/s", "raw_value": nv / tr if tr else None,
         "ratio": tr / te if te else None, "target": "env overhead <= 20%",
         "note": f"{steps} random steps over {len(r['rows'])} scenes, {nv} valid"},
        {"what": "VLM evaluate images/s", "value": v["eval_img_per_s"],
         "raw": "bare forward images/s", "raw_value": v["bare_img_per_s"],
         "ratio": v["bare_img_per_s"] and v["eval_img_per_s"] / v["bare_img_per_s"],
         "target": "eval overhead <= 15%", "note": f"{v['vlm']}, {v['n']} images"},
        {"what": "VLM fine-tune images/s", "value": v["finetune_img_per_s"],
         "raw": "bare forward images/s", "raw_value": v["bare_img_per_s"],
         "ratio": v["bare_img_per_s"] and v["finetune_img_per_s"] / v["bare_img_per_s"],
         "target": "-", "note": f"{v['epochs']} epochs"},
        *([{"what": "VLM evaluate images/s, warm cache", "value": v["eval_cached_img_per_s"],
            "raw": "bare forward images/s", "raw_value": v["bare_img_per_s"],
            "ratio": v["eval_cached_img_per_s"] / v["bare_img_per_s"], "target": "-",
            "note": "a fixed set evaluated again (frozen prefix cached)"}]
          if v.get("eval_cached_img_per_s") else []),
        {"what": "bridge env steps/s", "value": bh["bridge_steps_per_s"],
         "raw": "embedded env steps/s", "raw_value": bh["embedded_steps_per_s"],
         "ratio": bh["bridge_steps_per_s"] / bh["embedded_steps_per_s"],
         "target": "bridge overhead <= 25%", "note": f"action scale {bh['action_scale']}"},
    ]


def run(args: argparse.Namespace) -> dict:
    fast, size = args.fast, args.size
    t = time.perf_counter()
    out: dict = {"benchmark": "throughput", "fast": fast, "image_size": size}
    render = ["--size", str(size), "--steps", "60" if fast else "300"]
    out["render"] = run_script("bench_render", render + (["--scenes", "kitchen,bedroom"]
                                                         if fast else []))
    vlm = ["--vlm", "lite", "--source-size", str(size), "--allocators", "tcmalloc"]
    out["vlm"] = run_script("bench_vlm", vlm + (["--n", "64", "--repeats", "1", "--epochs", "1"]
                                                if fast else []))
    bridge = ["--size", str(size), "--steps", "40" if fast else "120",
              "--blocks", "2" if fast else "3"]
    out["bridge"] = run_script("bench_bridge", bridge + (["--action-scales", "0.5"]
                                                         if fast else []))
    out["table"] = headline(out)
    out["wall_s"] = time.perf_counter() - t
    out["machine"] = machine_info()
    return out


def table(res: dict, out: Path) -> list[str]:
    f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    lines = [f"Image size {res['image_size']} px, all pairs measured in the same run.", "",
             "| measured | /s | raw counterpart | /s | ratio | target | note |",
             "|---|---|---|---|---|---|---|"]
    for r in headline(res):
        lines.append(f"| {r['what']} | {f(r['value'])} | {r['raw']} | {f(r['raw_value'])} | "
                     f"{f(r['ratio'])} | {r['target']} | {r['note']} |")
    return lines


def figures(res: dict, out: Path) -> list[Path]:
    """Each measured rate beside its raw counterpart: `out` with .png."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.4))
    tab = res["table"]
    xs = np.arange(len(tab))
    ax.bar(xs - 0.2, [r["value"] or 0 for r in tab], 0.4, label="measured")
    ax.bar(xs + 0.2, [r["raw_value"] or 0 for r in tab], 0.4, label="raw counterpart")
    for i, r in enumerate(tab):
        if r["ratio"]:
            ax.text(i, max(r["value"] or 0, r["raw_value"] or 0), f"×{r['ratio']:.2f}",
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels([r["what"] for r in tab], rotation=12, fontsize=7)
    ax.set_ylabel("per second")
    ax.set_yscale("log")
    ax.set_title(f"Throughput vs raw counterparts ({res['image_size']} px)")
    ax.legend(fontsize=8)
    return [save_figure(fig, out.with_suffix(".png"), res)]


if __name__ == "__main__":
    sys.exit(main(__name__))
