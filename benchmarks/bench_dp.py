"""Data-parallel VLM fine-tuning on this machine's CPUs: images/s at 1 and 2 processes (or
`--processes ...`), side by side in one run, with the load average recorded.

    python benchmarks/bench_dp.py                              # lite, 64 synthetic images
    python benchmarks/bench_dp.py --vlm clip-tiny --samples 128 --epochs 4

Each layout PxT (P processes, T torch threads each; default 1x1, 1x2 and 2x1, i.e. one core,
then both cores used by threads or by processes) runs as its own `torchrun --nproc_per_node P`
launch of this script (1 process takes the plain single-process path). Timed on every launch,
after building the model and an untimed warm-up call on other samples: `finetune` on n samples
for K epochs from a cold cache (frozen prefix + K epochs, as the loop's first call on a new
batch), the same call again (prefix cached: the trainable part only), and `evaluate` on the n
samples. Launches are interleaved over `--repeats` and the median is reported. Writes
benchmarks/results/dp.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine_info, main

OUT = "dp.json"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vlm", default="lite")
    p.add_argument("--image-size", type=int, default=192, help="lite input size (px)")
    p.add_argument("--samples", type=int, default=64, help="fine-tuning samples (global batch set)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--layouts", nargs="+", default=["1x1", "1x2", "2x1"],
                   help="PxT: P processes with T torch threads each")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)   # internal: result file


def worker(args: argparse.Namespace) -> None:
    """One launch: build, then time the phases; the main process writes the result."""
    import torch

    from rls3.vlm import build_vlm
    from rls3.vlm.distributed import init_data_parallel
    from rls3.vlm.synthetic import make_samples

    group = init_data_parallel()
    opts = {"image_size": args.image_size} if args.vlm == "lite" else {}
    vlm = build_vlm(args.vlm, batch_size=args.batch_size, seed=args.seed, progress=False,
                    mirror_augment=True, **opts)
    if group is not None:
        vlm.distribute(group)
    samples = make_samples(args.samples, seed=args.seed, size=args.image_size)

    def timed(fn) -> tuple[float, float]:
        if group is not None:
            torch.distributed.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if group is not None:
            torch.distributed.barrier()
        return time.perf_counter() - t0, time.process_time() - c0

    # warm-up on other samples (first-call allocations, thread pools), not timed
    vlm.finetune(make_samples(args.batch_size, seed=args.seed + 1, size=args.image_size), 1)
    cold, cold_cpu = timed(lambda: vlm.finetune(samples, args.epochs))
    warm, warm_cpu = timed(lambda: vlm.finetune(samples, args.epochs))
    ev, ev_cpu = timed(lambda: vlm.evaluate(samples))
    if group is None or group.is_main:
        images = args.samples * args.epochs
        args.worker.write_text(json.dumps({
            "processes": 1 if group is None else group.world_size,
            "threads_per_process": torch.get_num_threads(),
            "finetune_cold_s": cold, "finetune_warm_s": warm, "evaluate_s": ev,
            "finetune_cold_img_s": images / cold, "finetune_warm_img_s": images / warm,
            "evaluate_img_s": args.samples / ev,
            "main_process_cpu_s": {"finetune_cold": cold_cpu, "finetune_warm": warm_cpu,
                                   "evaluate": ev_cpu}}))


def launch(args: argparse.Namespace, nproc: int, threads: int, out: Path) -> dict:
    """Run this script as `worker` under torchrun: `nproc` processes, `threads` threads each."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", __file__, "--worker", str(out),
           "--vlm", args.vlm, "--image-size", str(args.image_size), "--samples", str(args.samples),
           "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
           "--seed", str(args.seed)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{nproc}-process launch failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def table(res: dict, out: Path) -> list[str]:
    c = res["config"]
    lines = [f"Fine-tuning `{c['vlm']}` ({c['image_size']} px) on {c['samples']} samples x "
             f"{c['epochs']} epochs, batch {c['batch_size']}, {res['machine']['cpus']} CPUs, "
             f"load average {res['load_before'][0]:.1f} before / {res['load_after'][0]:.1f} "
             f"after (median of {c['repeats']}):", "",
             "| processes | threads each | fine-tune cold img/s | fine-tune warm img/s | "
             "evaluate img/s |", "|---|---|---|---|---|"]
    for r in res["results"]:
        lines.append(f"| {r['processes']} | {r['threads_per_process']} | "
                     f"{r['finetune_cold_img_s']:.1f} | {r['finetune_warm_img_s']:.1f} | "
                     f"{r['evaluate_img_s']:.1f} |")
    return lines


def run(args: argparse.Namespace) -> dict | None:
    """Every layout side by side (None in a `--worker` launch: it writes its own file)."""
    if args.worker is not None:
        worker(args)
        return None
    load_before = list(os.getloadavg())
    layouts = [tuple(int(x) for x in lay.lower().split("x")) for lay in args.layouts]
    runs: dict[tuple[int, ...], list[dict]] = {lay: [] for lay in layouts}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for p, t in layouts:
                runs[(p, t)].append(launch(args, p, t, Path(tmp) / f"{p}x{t}_{r}.json"))
    results = []
    for (p, _), rs in runs.items():
        med = {k: statistics.median(x[k] for x in rs) for k in rs[0]
               if isinstance(rs[0][k], (int, float))}
        results.append({**med, "processes": p, "threads_per_process": rs[0]["threads_per_process"],
                        "runs": rs})
    res = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                      if k != "worker"},
           "machine": machine_info(), "load_before": load_before,
           "load_after": list(os.getloadavg()), "results": results}
    return res


if __name__ == "__main__":
    sys.exit(main(__name__))
