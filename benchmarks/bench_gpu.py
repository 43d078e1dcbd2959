"""The paper-size VLMs on one GPU (bf16), through the project's own adapters: images/s of
feedback, fine-tuning and evaluation, peak GPU memory, and the time of one paper-scale iteration.

    python benchmarks/bench_gpu.py                        # all three models, ~5-8 min on an H100
    python benchmarks/bench_gpu.py --models clip-b32-random --finetune-samples 500
    python benchmarks/bench_gpu.py --cpu-smoke --out /tmp/gpu_smoke.json   # tiny models, CPU

Models (random weights, built offline: no hub access needed): `clip-b32-random` (CLIP
ViT-B/32 size, 151M parameters), `siglip-base-random` (SigLIP base/16-224, 203M) and
`paligemma-3b-random` (PaliGemma-3B, 2.9B; only its language model's attention trains). Samples
are synthetic 224-px images with rls3 captions (`rls3.vlm.synthetic`).

Per model it times, each phase once after an untimed warm-up call: `feedback` on
`--feedback-samples`, `finetune` on `--finetune-samples` for K epochs (CLIP-type; default the
paper's K = 10) or K optimizer steps (PaliGemma; default 256, batch 4), and `evaluate` on
`--eval-samples`; peak GPU memory per phase (`torch.cuda.max_memory_allocated`). One paper-scale
iteration (E = 20 episodes of T0 = 200 frames fed back, 2000 samples fine-tuned, 500 validation +
1000 test samples evaluated) is extrapolated from the measured per-image times:
4000 x feedback + fine-tuning scaled to 2000 samples (CLIP-type: K epochs; PaliGemma: the K steps
as measured) + 1500 x evaluation. Writes benchmarks/results/gpu.json (or --out).
Without CUDA it exits with status 2 unless `--cpu-smoke` (tiny models, a few samples, the same
code path on the CPU).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from _common import Unavailable, machine_info, main

OUT = "gpu.json"
log = logging.getLogger("bench_gpu")

PAPER_MODELS = ("clip-b32-random", "siglip-base-random", "paligemma-3b-random")
#: the same code path with tiny models, for `--cpu-smoke`
SMOKE_MODELS = {"clip-b32-random": "clip-tiny", "siglip-base-random": "siglip-tiny",
                "paligemma-3b-random": "paligemma-tiny"}
#: one paper iteration: E x T0 frames fed back, fine-tuning samples, validation + test samples
PAPER_FEEDBACK, PAPER_FINETUNE, PAPER_EVAL = 20 * 200, 2000, 500 + 1000


@dataclass(frozen=True)
class Phase:
    """One timed call: samples, seconds, images/s and peak GPU memory (GiB; None on CPU)."""

    samples: int
    seconds: float
    images_per_s: float
    peak_gib: float | None


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", default=list(PAPER_MODELS), choices=PAPER_MODELS)
    p.add_argument("--feedback-samples", type=int, default=512)
    p.add_argument("--finetune-samples", type=int, default=2000)
    p.add_argument("--eval-samples", type=int, default=512)
    p.add_argument("--epochs", type=int, default=10, help="K for the CLIP-type models")
    p.add_argument("--steps", type=int, default=256, help="K for PaliGemma (optimizer steps)")
    p.add_argument("--paligemma-feedback-samples", type=int, default=64,
                   help="PaliGemma generates answers: fewer samples, same extrapolation")
    p.add_argument("--paligemma-eval-batch", type=int, default=16,
                   help="batch size of PaliGemma's generation (training keeps batch 4)")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny models and a few samples on the CPU (tests the script)")
    p.add_argument("--seed", type=int, default=0)


def _timed(fn: Callable[[], Any], n: int, cuda: bool) -> Phase:
    """Run `fn` once (synchronised); its time and the peak GPU memory it reached."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return Phase(n, dt, n / max(dt, 1e-9), peak)


def bench_model(name: str, args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    """Build `name` and time feedback, fine-tuning and evaluation through its adapter."""
    from rls3.vlm import build_vlm
    from rls3.vlm.synthetic import make_samples

    build = SMOKE_MODELS[name] if args.cpu_smoke else name
    paligemma = name.startswith("paligemma")
    size = 32 if args.cpu_smoke else 224
    t0 = time.perf_counter()
    vlm = build_vlm(build, device="cuda" if cuda else "cpu", seed=args.seed, progress=False)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in vlm.module.parameters())
    trainable = sum(p.numel() for _, p in vlm.trainable_parameters())
    n_fb = args.paligemma_feedback_samples if paligemma else args.feedback_samples
    n_ev = args.paligemma_feedback_samples if paligemma else args.eval_samples
    n_ft = args.finetune_samples
    pool = make_samples(max(n_fb, n_ev, n_ft) + 8, seed=args.seed, size=size)
    warm = pool[-8:]
    train_bs = vlm.batch_size
    score_bs = args.paligemma_eval_batch if paligemma and not args.cpu_smoke else train_bs

    vlm.batch_size = score_bs
    vlm.feedback(warm)                                             # warm-up, not timed
    feedback = _timed(lambda: vlm.feedback(pool[:n_fb]), n_fb, cuda)
    vlm.batch_size = train_bs
    vlm.finetune(warm, 1)
    k = args.steps if paligemma else args.epochs
    ft_images = k * train_bs if paligemma else k * n_ft
    finetune = _timed(lambda: vlm.finetune(pool[:n_ft], k), ft_images, cuda)
    vlm.batch_size = score_bs
    evaluate = _timed(lambda: vlm.evaluate(pool[:n_ev]), n_ev, cuda)

    ft_paper = finetune.seconds if paligemma else finetune.seconds * PAPER_FINETUNE / n_ft
    iteration = (PAPER_FEEDBACK / feedback.images_per_s + ft_paper
                 + PAPER_EVAL / evaluate.images_per_s)
    out = {"model": name, "built_as": build, "parameters": params, "trainable": trainable,
           "dtype": str(vlm.dtype), "train_batch": train_bs, "score_batch": score_bs,
           "k": k, "k_unit": "optimizer steps" if paligemma else "epochs", "build_s": build_s,
           "feedback": asdict(feedback), "finetune": asdict(finetune),
           "evaluate": asdict(evaluate),
           "paper_iteration_s": iteration,
           "paper_iteration_parts_s": {"feedback": PAPER_FEEDBACK / feedback.images_per_s,
                                       "finetune": ft_paper,
                                       "evaluate": PAPER_EVAL / evaluate.images_per_s}}
    log.info("%s: %s", name, out)
    vlm = None                  # drop the model (the lambdas above hold no reference past here)
    if cuda:
        torch.cuda.empty_cache()
    return out


def table(res: dict[str, Any], out: Path) -> list[str]:
    kind = "bf16" if res["cuda"] else "CPU smoke: tiny models"
    lines = [f"Device: {res['device']} ({kind})",
             "", "| model | params | feedback img/s | fine-tune img/s | eval img/s | "
             "peak GiB (fine-tune) | paper iteration |", "|---|---|---|---|---|---|---|"]
    for m in res["models"]:
        peak = m["finetune"]["peak_gib"]
        lines.append(
            f"| {m['model'] if m['built_as'] == m['model'] else m['built_as']} | "
            f"{m['parameters'] / 1e6:.1f}M | "
            f"{m['feedback']['images_per_s']:.1f} | {m['finetune']['images_per_s']:.1f} | "
            f"{m['evaluate']['images_per_s']:.1f} | "
            f"{'-' if peak is None else f'{peak:.1f}'} | {m['paper_iteration_s']:.0f} s |")
    return lines


def run(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.cpu_smoke:
        args.feedback_samples = args.finetune_samples = args.eval_samples = 8
        args.paligemma_feedback_samples = 4
        args.epochs, args.steps = 1, 2
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        raise Unavailable("no CUDA device here: bench_gpu.py measures the paper-size models on a "
                          "GPU. Run it on a GPU machine, or with --cpu-smoke to check the script "
                          "on the CPU")
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    res = {"device": device, "cuda": cuda, "cpu_smoke": args.cpu_smoke,
           "torch": torch.__version__,
           "cuda_version": torch.version.cuda if cuda else None,
           "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "machine": machine_info(),
           "models": [bench_model(name, args, cuda) for name in args.models]}
    return res


if __name__ == "__main__":
    sys.exit(main(__name__))
