"""What does the agent's per-sample reward tell it? For each run, every kept frame's hardness under
one VLM for the caption of each ordered pair of its three objects: how much of a frame's hardness
is the caption drawn for it (which the agent does not choose) rather than its layout, and how well
the layout predicts it.

    python benchmarks/bench_feedback_signal.py --runs RUN_DIR[,RUN_DIR...] [--weights DIR|fresh]
        [--frames N] [--out benchmarks/results/feedback_signal.json]

Per run: the mean hardness; its variance split into within frames (across the 6 captions of one
layout) and between frames (the layouts' mean hardness); and the 5-fold cross-validated R^2 with
which the layout predicts one drawn caption's hardness, the mean over the 6 and the maximum, by
ridge regression (the best of 13 penalties, an optimistic choice) and by a 64x64 MLP. The layout
features are what any agent could know: each object's offset from the camera along its right, up
and forward axes, the pairs' offsets along the same axes, which object is in which slot and the
room. `--weights`: the VLM that scores (a `lite` folder, e.g. a run's checkpoint `vlm`; default
each run's own, the one `rls3 eval RUN_DIR` scores; `fresh`: `lite` as a run starts, what
iteration 1's feedback used).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine_info, main

OUT = "feedback_signal.json"
FOLDS = 5


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--runs", default="", help="run folders, comma-separated (e.g. "
                    "bench_sampler's runs/sampler/sac-place__0)")
    ap.add_argument("--weights", default=None,
                    help="VLM folder that scores every run, or 'fresh' (default: each run's "
                         "own, as rls3 eval RUN_DIR picks it)")
    ap.add_argument("--frames", type=int, default=0, help="first N kept frames per run (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="negatives, folds and the drawn caption")
    ap.add_argument("--cache", default=None, metavar="DIR",
                    help="keep each run's scores in DIR/<run>.<scorer>.npz and reuse them")


def _frames(run: Path, limit: int) -> list[Any]:
    from rls3.data import read_dataset

    batches = sorted((run / "data").glob("iter_*"))
    if not batches:
        raise SystemExit(f"{run}: no saved batches under data/ (a run with loop.save_batches)")
    samples = [s for b in batches for s in read_dataset(b)]
    return samples[:limit] if limit else samples


def _all_pairs(sample: Any, rng: np.random.Generator) -> list[Any]:
    """The frame once per ordered pair of its objects, each with that pair's caption and hard
    negatives (the loop's rule `any` draws one of these)."""
    from rls3.captions import describe_pair
    from rls3.sample import Sample

    objs, fwd = sample.state.objects, sample.state.camera.forward
    return [Sample(sample.image, sample.state, describe_pair(a, b, fwd, rng))
            for i, a in enumerate(objs) for j, b in enumerate(objs) if i != j]


def _features(sample: Any, pool: list[str], n_scenes: int) -> list[float]:
    """Camera-frame offsets of the objects and of each pair, slot identities, room."""
    from rls3.captions import camera_axes

    s = sample.state
    fwd = np.asarray(s.camera.forward, dtype=float)
    right, up = camera_axes(fwd)
    axes = np.stack([right, up, fwd])
    pos = [np.asarray(o.position, dtype=float) for o in s.objects]
    f: list[float] = []
    for p in pos:
        f += list(axes @ (p - np.asarray(s.camera.position, dtype=float)))
    for i in range(len(pos)):
        for j in range(i + 1, len(pos)):
            f += list(axes @ (pos[j] - pos[i]))
    for o in s.objects:
        f += [float(o.name == n) for n in pool]
    f += [float(s.scene_index == k) for k in range(n_scenes)]
    return f


def _folds(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(n), FOLDS)


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1.0 - np.sum((y - pred) ** 2) / max(np.sum((y - y.mean()) ** 2), 1e-12))


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale of the training columns; a column constant there keeps scale 1 (a one-hot
    absent from a fold would otherwise blow up on the held-out rows that have it)."""
    sd = x.std(0)
    return x.mean(0), np.where(sd > 1e-6, sd, 1.0)


def ridge_r2(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> float:
    """Cross-validated R^2 of ridge regression, the best of 13 penalties (optimistic)."""
    folds = _folds(len(y), rng)
    best = -np.inf
    for alpha in np.logspace(-3, 3, 13):
        pred = np.empty_like(y)
        for k, test in enumerate(folds):
            train = np.concatenate([f for i, f in enumerate(folds) if i != k])
            mu, sd = _standardiser(x[train])
            a = np.hstack([(x[train] - mu) / sd, np.ones((len(train), 1))])
            reg = alpha * np.eye(a.shape[1])
            reg[-1, -1] = 0.0
            w = np.linalg.solve(a.T @ a + reg, a.T @ y[train])
            pred[test] = np.hstack([(x[test] - mu) / sd, np.ones((len(test), 1))]) @ w
        best = max(best, _r2(y, pred))
    return float(best)


def mlp_r2(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, epochs: int = 400) -> float:
    """Cross-validated R^2 of a 64x64 MLP (Adam, weight decay, full-batch, standardised inputs
    and targets), stopped at the epoch with the lowest loss on 15% of each training fold held
    out, so that it cannot overfit its way far below zero."""
    import torch

    folds = _folds(len(y), rng)
    pred = np.empty_like(y)
    torch.manual_seed(int(rng.integers(2**31)))
    for k, test in enumerate(folds):
        train = rng.permutation(np.concatenate([f for i, f in enumerate(folds) if i != k]))
        cut = max(1, int(0.15 * len(train)))
        inner, fit = train[:cut], train[cut:]
        mu, sd = _standardiser(x[fit])
        ym, ys = float(y[fit].mean()), float(y[fit].std()) or 1.0  # targets standardised too
        t = {name: (torch.tensor((x[i] - mu) / sd, dtype=torch.float32),
                    torch.tensor((y[i] - ym) / ys, dtype=torch.float32))
             for name, i in (("fit", fit), ("inner", inner))}
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(),
                                  torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-2)
        best, state = np.inf, copy.deepcopy(net.state_dict())
        for _ in range(epochs):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(t["fit"][0]).squeeze(1), t["fit"][1]).backward()
            opt.step()
            with torch.no_grad():
                v = float(torch.nn.functional.mse_loss(net(t["inner"][0]).squeeze(1),
                                                       t["inner"][1]))
            if v < best:
                best, state = v, copy.deepcopy(net.state_dict())
        net.load_state_dict(state)
        with torch.no_grad():
            xs = torch.tensor((x[test] - mu) / sd, dtype=torch.float32)
            pred[test] = net(xs).squeeze(1).numpy() * ys + ym
    return _r2(y, pred)


def _vlm(weights: str | None, run: Path) -> Any:
    from rls3.rundir import vlm_checkpoint
    from rls3.vlm import build_vlm

    if weights == "fresh":
        return build_vlm("lite", progress=False)
    folder = weights or vlm_checkpoint(run)
    return build_vlm("lite", weights=str(folder), progress=False)


def measure(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    frames = _frames(run, args.frames)
    pool = sorted({o.name for f in frames for o in f.state.objects})
    n_scenes = 1 + max(f.state.scene_index for f in frames)
    expanded = [e for f in frames for e in _all_pairs(f, rng)]
    per = len(expanded) // len(frames)
    scorer = ("fresh" if args.weights == "fresh" else
              "own" if not args.weights else Path(args.weights).name)
    cached = Path(args.cache) / f"{run.name}.{scorer}.npz" if args.cache else None
    if cached is not None and cached.is_file():
        z = np.load(cached)
        hard, scored_s = z["hardness"], float(z["scored_s"])
    else:
        vlm = _vlm(args.weights, run)
        t0 = time.perf_counter()
        hard = np.asarray(vlm.feedback(expanded).hardness, dtype=float).reshape(len(frames), per)
        scored_s = time.perf_counter() - t0
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cached, hardness=hard, scored_s=scored_s)
    if hard.shape != (len(frames), per):
        raise SystemExit(f"{cached}: scores of another selection of frames; remove it")
    x = np.asarray([_features(f, pool, n_scenes) for f in frames])
    drawn = hard[np.arange(len(frames)), rng.integers(per, size=len(frames))]
    within, between = float(hard.var(axis=1).mean()), float(hard.mean(axis=1).var())
    targets = {"one drawn caption": drawn, "mean of the pair captions": hard.mean(axis=1),
               "max of the pair captions": hard.max(axis=1)}
    label = ("fresh lite" if args.weights == "fresh" else
             "/".join(Path(args.weights).parts[-4:]) if args.weights else "its own VLM")
    return {"run": str(run), "weights": label,
            "frames": len(frames), "captions_per_frame": per, "scored_s": scored_s,
            "hardness_mean": float(hard.mean()), "var_within_frames": within,
            "var_between_frames": between, "share_within": within / max(within + between, 1e-12),
            "r2": {k: {"ridge": ridge_r2(x, y, rng), "mlp": mlp_r2(x, y, rng)}
                   for k, y in targets.items()}}


def run(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(1)
    runs = [Path(r) for r in args.runs.split(",") if r]
    if not runs:
        raise SystemExit("give --runs RUN_DIR[,RUN_DIR...] (runs with saved batches)")
    rows = []
    for r in runs:
        if not r.is_dir():
            raise SystemExit(f"not a run folder: {r}")
        rows.append(measure(r, args))
        print(f"{r.name}: share within {rows[-1]['share_within']:.2f}", flush=True)
    return {"benchmark": "feedback_signal", "machine": machine_info(), "rows": rows}


def table(res: dict, out: Any) -> list[str]:
    lines = ["| run | scored by | frames | hardness | variance within frames (caption) | "
             "R² one caption (ridge / MLP) | R² mean of captions | R² max of captions |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        q = r["r2"]
        cell = [f"{q[k]['ridge']:+.3f} / {q[k]['mlp']:+.3f}" for k in
                ("one drawn caption", "mean of the pair captions", "max of the pair captions")]
        lines.append(f"| {Path(r['run']).name} | {r['weights']} | {r['frames']} | "
                     f"{r['hardness_mean']:.3f} | {r['share_within']:.0%} | " + " | ".join(cell)
                     + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main(__name__))
