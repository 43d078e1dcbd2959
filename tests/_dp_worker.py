"""Run by tests/test_vlm_distributed.py, once in-process and once under `torchrun
--nproc_per_node 2`: score, fine-tune and evaluate tiny adapters on a fixed global batch and
(on the main process) save what came out."""

from __future__ import annotations

import os
import sys

import torch

from rls3.vlm import build_vlm
from rls3.vlm.distributed import init_data_parallel
from rls3.vlm.synthetic import make_samples

#: adapter, options, fine-tuning batch size, fine-tuning calls' steps. Samples: 11, scored in
#: groups of 4 (4, 4, 3: round-robin over 2 processes). Contrastive adapters: K epochs; batches of
#: 4 give uneven, padded shards (2 + 1). For `lite` at 64 px the image top sees a 2x2 map through
#: ReLU6 kinks: after a few steps a rounding-size weight difference can flip a unit and change a
#: gradient outright, so its weights are compared after one step over the whole global batch (its
#: losses over 3 epochs). PaliGemma: K optimizer steps on batches of 3 (shards 2 + 1).
CASES = (("clip-tiny", {"mirror_augment": True}, 4, 2),
         ("lite", {"image_size": 64, "mirror_augment": True}, 11, 3),
         ("paligemma-tiny", {}, 3, 3))
N_SAMPLES, EVAL_BATCH = 11, 4
#: plain SGD makes the weights a linear function of the gradients, so equal gradients show as
#: equal weights (AdamW's first steps are ~lr * sign(g): rounding noise in a gradient that is
#: exactly zero in theory, e.g. an attention key bias, becomes a full +-lr step)
SGD_LR = 0.05


def run(name: str, options: dict, ft_batch: int, epochs: int) -> dict:
    """Everything one process observes: step losses, feedback, metrics, trained weights."""
    group = init_data_parallel()
    samples = make_samples(N_SAMPLES, seed=4, size=48)
    vlm = build_vlm(name, batch_size=EVAL_BATCH, seed=0, progress=False, **options)
    vlm.distribute(group)
    vlm._optimizer = torch.optim.SGD([p for _, p in vlm.trainable_parameters()], lr=SGD_LR)
    before = {k: v.detach().clone() for k, v in vlm.module.state_dict().items()}
    fb = vlm.feedback(samples)
    vlm.batch_size = ft_batch
    losses = vlm.finetune(samples, 1, groups=[i % 2 for i in range(N_SAMPLES)])
    weights = {k: v.detach().clone() for k, v in vlm.module.state_dict().items()}
    group_losses = list(vlm.last_group_losses)
    losses += vlm.finetune(samples, epochs - 1)
    vlm.batch_size = EVAL_BATCH
    metrics = vlm.evaluate(samples)
    return {"world": 1 if group is None else group.world_size,
            "main": group is None or group.is_main,
            "losses": losses, "group_losses": group_losses,
            "feedback": (fb.per_sample, fb.j2, fb.hardness), "metrics": metrics.to_dict(),
            "before": before,
            "weights": weights}


if __name__ == "__main__":
    results = {case[0]: run(*case) for case in CASES}
    if next(iter(results.values()))["main"]:
        torch.save(results, sys.argv[1])
    # skip the interpreter's teardown: gloo's threads can abort a finished process there
    # (SIGABRT, "terminate called without an active exception") and the launcher then fails
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
