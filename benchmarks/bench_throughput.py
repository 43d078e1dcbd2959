"""Throughput, each side by side with its raw counterpart in the same run:

  env steps with rendering  vs  raw renders of the same layouts   (bench_render.run)
  VLM evaluate / fine-tune  vs  a bare forward of the same model   (bench_vlm.py)
  Unity bridge env steps    vs  the embedded backend               (bench_bridge.run)

    python benchmarks/bench_throughput.py [--fast] [--size 224] [--out benchmarks/results/throughput.json]

The three existing benchmarks do the measuring (imported, or for bench_vlm run as a script with
`--out`); this collects their headline numbers and ratios into one record.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _common import finish, machine_info  # noqa: E402


def vlm(fast: bool, name: str = "lite", size: int = 224) -> dict:
    """bench_vlm.py as a script (it is its own CLI); returns its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "vlm.json"
        cmd = [sys.executable, str(HERE / "bench_vlm.py"), "--vlm", name, "--out", str(out),
               "--source-size", str(size), "--allocators", "tcmalloc"]  # side by side: allocator
        if fast:
            cmd += ["--n", "64", "--repeats", "1", "--epochs", "1"]
        subprocess.run(cmd, cwd=ROOT, check=True)
        res = json.loads(out.read_text())
    res["command"] = " ".join(cmd[1:])
    return res


def table(out: dict) -> list[dict]:
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


def run(fast: bool = False, size: int = 224) -> dict:
    import bench_bridge
    import bench_render

    t = time.perf_counter()
    out: dict = {"benchmark": "throughput", "fast": fast, "image_size": size}
    scenes = ["kitchen", "bedroom"] if fast else None
    out["render"] = bench_render.run(size=size, steps=60 if fast else 300, scenes=scenes)
    out["vlm"] = vlm(fast, size=size)
    out["bridge"] = bench_bridge.run(size=size, steps=40 if fast else 120,
                                     blocks=2 if fast else 3, scales=[0.5] if fast else None)
    out["table"] = table(out)
    out["wall_s"] = time.perf_counter() - t
    out["machine"] = machine_info()
    return out


def markdown(res: dict) -> list[str]:
    f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    lines = [f"Image size {res['image_size']} px, all pairs measured in the same run.", "",
             "| measured | /s | raw counterpart | /s | ratio | target | note |",
             "|---|---|---|---|---|---|---|"]
    for r in table(res):
        lines.append(f"| {r['what']} | {f(r['value'])} | {r['raw']} | {f(r['raw_value'])} | "
                     f"{f(r['ratio'])} | {r['target']} | {r['note']} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "throughput.json")
    a = ap.parse_args()
    res = run(a.fast, a.size)
    finish(res, a.out, markdown)


if __name__ == "__main__":
    main()
