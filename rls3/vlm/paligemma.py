"""`paligemma`: the generative path — `PaliGemmaForConditionalGeneration` through transformers, by
hub name (e.g. `google/paligemma-3b-pt-224`, on a GPU machine) or local folder.

- Prompt: the sample's question ("What is the position of the {B} relative to the {A}?") through
  `prompt_template` (default "{question}"); target: the positive caption (positives only).
- Fine-tuning: K optimizer steps (AdamW) on shuffled mini-batches of `batch_size`, teacher-forced
  next-token loss on the answer tokens only. ONLY the language model's self-attention q/k/v/o
  projections train; every other parameter has requires_grad=False.
- Feedback/evaluation: greedy generation (`max_new_tokens`), scored with `rls3.rubric.score`
  (S_PG, 1-5). Feedback: per-sample S_PG and J2 = (6 - mean S_PG)**2. Metrics: mean S_PG overall,
  per term and per complexity; `loss` is the mean teacher-forced answer loss (`eval_loss=True`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from rls3.sample import Sample
from rls3.vlm.base import Feedback, Metrics
from rls3.vlm.common import aligned, batches, breakdown, load_hf_config, progress, to_pil
from rls3.vlm.distributed import Shards
from rls3.vlm.shell import AdapterShell

if TYPE_CHECKING:
    from transformers import PaliGemmaForConditionalGeneration

log = logging.getLogger(__name__)

#: Names of the trainable parameters: self-attention q/k/v/o projections of the language model.
LM_ATTENTION = re.compile(
    r"(?:^|\.)language_model\.(?:.*\.)?layers\.\d+\.self_attn\.(?:q|k|v|o)_proj\.(?:weight|bias)$")
IMAGE_TOKEN = "<image>"
#: S_PG's best score; J2 = (S_MAX + 1 - mean S_PG)**2.
S_MAX = 5


def load_paligemma(source: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """(model, processor) of a PaliGemma checkpoint given as a hub name or local folder (weights
    in `dtype`). FileNotFoundError for a missing folder, ValueError for another model type."""
    import transformers
    from transformers import AutoProcessor, PaliGemmaForConditionalGeneration

    src, config = load_hf_config(source, "PaliGemma", "paligemma")
    if getattr(config, "model_type", None) != "paligemma":
        raise ValueError(f"checkpoint {str(source)!r} is a {config.model_type!r} model; the "
                         "paligemma adapter needs a 'paligemma' checkpoint")
    major = int(transformers.__version__.split(".")[0])
    kw: dict[str, Any] = {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}
    model = PaliGemmaForConditionalGeneration.from_pretrained(src, **kw)
    processor = AutoProcessor.from_pretrained(src)
    return aligned(model).eval(), processor


def freeze_all_but_lm_attention(model: nn.Module) -> list[str]:
    """Set requires_grad=True exactly on the language model's attention projections; returns
    their names. Raises if the model has none (not a PaliGemma-like layout)."""
    names = []
    for name, p in model.named_parameters():
        train = bool(LM_ATTENTION.search(name))
        p.requires_grad_(train)
        if train:
            names.append(name)
    if not names:
        raise ValueError("no language-model self-attention projections found to fine-tune")
    return names


class PaliGemmaVLM(AdapterShell):
    """PaliGemma behind the `VLM` Protocol (see the module docstring).

    `weights`: hub name or folder (`load_paligemma`); `tiny=True` builds a tiny random model with
    an offline tokenizer instead (tests), `tiny="3b"` a random one of PaliGemma-3B's size (GPU
    benchmarks). The model stays in eval mode (no dropout) while
    fine-tuning; weights are held in `dtype` (bfloat16 on CUDA by default).
    """

    kind = "paligemma"

    def __init__(self, name: str = "paligemma", *, weights: str | Path | None = None,
                 tiny: bool | str = False, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, batch_size: int = 4, lr: float = 1e-5,
                 weight_decay: float = 0.0, grad_clip: float | None = 1.0,
                 max_new_tokens: int = 24, prompt_template: str = "{question}",
                 eval_loss: bool = True, seed: int = 0, progress: bool = True) -> None:
        super().__init__(name, device=device, dtype=dtype, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, grad_clip=grad_clip, seed=seed,
                         progress=progress)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if "{question}" not in prompt_template:
            raise ValueError(f"prompt_template must contain '{{question}}', "
                             f"got {prompt_template!r}")
        self.max_new_tokens = max_new_tokens
        self.prompt_template = prompt_template
        self.eval_loss = eval_loss
        if weights is not None:
            model, processor = load_paligemma(weights, self.dtype)
        elif tiny:
            from rls3.vlm.tiny import tiny_paligemma
            model, processor = tiny_paligemma(seed=seed,
                                              size="tiny" if tiny is True else str(tiny))
        else:
            raise ValueError("the paligemma adapter needs `weights` (a hub name such as "
                             "'google/paligemma-3b-pt-224' or a local folder)")
        self._install(model, processor)
        self._resume_optimizer_from(weights)

    def _install(self, model: nn.Module, processor: Any) -> None:
        self.module = model.to(device=self.device, dtype=self.dtype).eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.trainable_names = freeze_all_but_lm_attention(self.module)

    @property
    def model(self) -> PaliGemmaForConditionalGeneration:
        """The `PaliGemmaForConditionalGeneration` (the adapter's `module`)."""
        return cast("PaliGemmaForConditionalGeneration", self.module)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the attention projections, one group. With several processes (`distribute`)
        the answer-token loss is a sum over samples divided by the batch's token count, so each
        process back-propagates its samples' share and the averaged gradients equal one
        process's."""
        params = [p for _, p in self.trainable_parameters()]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    # inputs ----------------------------------------------------------------------------------
    def prompts(self, samples: Sequence[Sample]) -> list[str]:
        return [IMAGE_TOKEN + self.prompt_template.format(question=s.description.question)
                for s in samples]

    def _inputs(self, samples: Sequence[Sample], with_answers: bool) -> dict[str, torch.Tensor]:
        kw: dict[str, Any] = {}
        if with_answers:
            kw["suffix"] = [s.description.answer for s in samples]
        enc = self.processor(images=to_pil([s.image for s in samples]),
                             text=self.prompts(samples), padding="longest",
                             return_tensors="np", **kw)
        keep = ["input_ids", "attention_mask", "pixel_values", "token_type_ids"]
        if with_answers:
            keep.append("labels")
        out = {k: torch.from_numpy(np.asarray(enc[k])).to(self.device)
               for k in keep if k in enc}
        out["pixel_values"] = out["pixel_values"].to(self.dtype)
        return out

    def training_inputs(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        """Model inputs with `labels` (-100 except on the answer tokens and the final <eos>)."""
        return self._inputs(samples, with_answers=True)

    # generation and scoring --------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, samples: Sequence[Sample]) -> list[str]:
        """Greedy answers to the samples' questions, in batches."""
        self.model.eval()
        answers: list[str] = []
        for sl in batches(len(samples), self.batch_size):
            answers += self._generate(list(samples[sl]))
        return answers

    def _generate(self, chunk: list[Sample]) -> list[str]:
        inputs = self._inputs(chunk, with_answers=False)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id,
                                  eos_token_id=self.tokenizer.eos_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [a.strip() for a in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    @torch.no_grad()
    def _score(self, samples: list[Sample], desc: str, with_loss: bool
               ) -> tuple[list[str], list[int], float | None]:
        from rls3.rubric import score

        self.model.eval()
        answers: list[str] = []
        scores: list[int] = []
        loss_sum, tokens = 0.0, 0
        t0 = time.perf_counter()
        groups = list(batches(len(samples), self.batch_size))
        mine = groups if self.parallel is None else self.parallel.deal(groups)
        per_group: list[tuple[list[str], list[int], float, int]] = []
        with progress(sum(g.stop - g.start for g in mine), desc, self.progress) as bar:
            for sl in mine:
                chunk = samples[sl]
                got = self._generate(chunk)
                loss, n = 0.0, 0
                if with_loss:
                    s, n = self._loss_sum(self.training_inputs(chunk))
                    loss = float(s)
                per_group.append((got, [int(score(a, x.description.terms))
                                        for a, x in zip(got, chunk, strict=True)], loss, n))
                bar.update(len(chunk))
        if self.parallel is not None:   # every group, in order, on every process
            per_group = self.parallel.undeal(per_group, len(groups))
        for got, sc, loss, n in per_group:
            answers += got
            scores += sc
            loss_sum, tokens = loss_sum + loss, tokens + n
        log.debug("%s: %d samples in %.1fs", desc, len(samples), time.perf_counter() - t0)
        return answers, scores, (loss_sum / max(tokens, 1)) if with_loss else None

    def _loss_sum(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Summed next-token cross-entropy over the answer tokens, and their count."""
        rows, tokens = self._loss_rows(batch)
        return rows.sum(), int(tokens.sum())

    def _loss_rows(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample summed answer-token cross-entropy (B,) and answer-token counts (B,)."""
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.model(**inputs).logits[:, :-1].float()
        target = labels[:, 1:]
        tok = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                          target.reshape(-1), ignore_index=-100,
                                          reduction="none").view(target.shape)
        return tok.sum(1), (target != -100).sum(1)

    def _parallel_loss(self, samples: list[Sample], rows: list[int]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step's loss with each process running its contiguous share of `rows`: returns
        the batch loss, this process's share of it (with gradient), and every row's summed loss
        and token count (gathered, no gradient, in the order of `rows`). A process whose share
        is empty runs one row at weight 0, so that every process has the same gradients to
        average."""
        group = self.parallel
        assert group is not None
        shards = Shards.of(len(rows), group.world_size)
        start, size = shards.starts[group.rank], shards.sizes[group.rank]
        mine = rows[start:start + size] or rows[:1]
        row_sum, row_tok = self._loss_rows(self.training_inputs([samples[i] for i in mine]))
        parts = group.gather_objects((row_sum.detach().float().cpu()[:size],
                                      row_tok.cpu()[:size]))
        all_sum = torch.cat([p[0] for p in parts])
        all_tok = torch.cat([p[1] for p in parts])
        total = all_tok.sum().clamp(min=1)
        local = row_sum[:size].sum() / total.to(row_sum.device)
        return all_sum.sum() / total, local, all_sum, all_tok

    # VLM Protocol ------------------------------------------------------------------------------
    def feedback(self, samples: Sequence[Sample]) -> Feedback:
        """Per-sample S_PG of the generated answers; J2 = (6 - mean S_PG)**2; hardness: 6 - S_PG
        of each sample."""
        samples = list(samples)
        if not samples:
            raise ValueError("feedback needs at least one sample")
        _, scores, _ = self._score(samples, f"{self.name} feedback", with_loss=False)
        mean = float(np.mean(scores))
        return Feedback(per_sample=tuple(float(s) for s in scores), j2=(S_MAX + 1 - mean) ** 2,
                        hardness=tuple(float(S_MAX + 1 - s) for s in scores),
                        success=tuple(float((s - 1) / (S_MAX - 1)) for s in scores))

    def evaluate(self, samples: Sequence[Sample]) -> Metrics:
        """Mean S_PG overall / per term / per complexity; `loss`: mean answer-token loss."""
        samples = list(samples)
        if not samples:
            raise ValueError("evaluate needs at least one sample")
        _, scores, loss = self._score(samples, f"{self.name} eval", with_loss=self.eval_loss)
        overall, per_term, per_cx = breakdown([float(s) for s in scores],
                                              [s.description for s in samples])
        return Metrics(score=overall, per_term=per_term, per_complexity=per_cx, loss=loss,
                       n=len(samples))

    def finetune(self, samples: Sequence[Sample], k: int,
                 groups: Sequence[int] | None = None) -> list[float]:
        """K AdamW steps on mini-batches of `batch_size` drawn from `samples` in seeded shuffled
        passes; returns the loss (mean answer-token cross-entropy) of every step. `groups` (one
        label per sample) fills `last_group_losses` with each group's token-mean loss per step."""
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"k (optimizer steps) must be a non-negative integer, got {k!r}")
        samples = list(samples)
        if groups is not None and len(groups) != len(samples):
            raise ValueError(f"groups has {len(groups)} labels for {len(samples)} samples")
        self.last_group_losses = []
        if not samples or k == 0:
            return []
        self.model.eval()
        opt = self.optimizer
        params = [p for _, p in self.trainable_parameters()]
        stream = self._minibatches(len(samples))
        losses: list[float] = []
        t0 = time.perf_counter()
        with progress(k, f"{self.name} finetune", self.progress, unit="step") as bar:
            for _ in range(k):
                losses.append(self._step(samples, next(stream), groups, opt, params))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        log.info("%s: %d steps in %.1fs, loss %.4f -> %.4f", self.name, k,
                 time.perf_counter() - t0, losses[0], losses[-1])
        return losses

    def _minibatches(self, n: int) -> Iterator[list[int]]:
        """Rows of the mini-batches of `batch_size`: seeded shuffled passes over the n samples
        (a pass is drawn when its first batch is asked for; its last batch may be short)."""
        while True:
            perm = torch.randperm(n, generator=self._generator).tolist()
            for sl in batches(n, self.batch_size):
                yield perm[sl]

    def _step(self, samples: list[Sample], rows: list[int], groups: Sequence[int] | None,
              opt: torch.optim.Optimizer, params: list[nn.Parameter]) -> float:
        """One optimizer step on `samples[rows]`: the token-mean answer loss (and each group's),
        its gradient (each process back-propagating its share), clipping, AdamW; returns the
        loss."""
        local_loss = None
        if self.parallel is not None:
            loss, local_loss, row_sum, row_tok = self._parallel_loss(samples, rows)
        else:
            batch = self.training_inputs([samples[i] for i in rows])
            row_sum, row_tok = self._loss_rows(batch)
            loss = row_sum.sum() / row_tok.sum().clamp(min=1)
        if groups is not None:
            per: dict[int, list[int]] = {}
            for j, i in enumerate(rows):
                per.setdefault(int(groups[i]), []).append(j)
            self.last_group_losses.append({
                g: float(row_sum[js].sum().detach() / row_tok[js].sum().clamp(min=1))
                for g, js in sorted(per.items())})
        opt.zero_grad(set_to_none=True)
        if self.parallel is not None and local_loss is not None:
            # this process's share, scaled so that averaging gives the batch gradient
            (local_loss * self.parallel.world_size).backward()
            self.parallel.mean_gradients(params)
        else:
            loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        opt.step()
        return float(loss.detach())

    # checkpoints (`AdapterShell.save` / `load`) -----------------------------------------------
    def _save_weights(self, folder: Path) -> None:
        """A transformers checkpoint folder (model + processor): `load_paligemma` reads it
        back."""
        self.model.save_pretrained(folder)
        self.processor.save_pretrained(folder)

    def _checkpoint_options(self) -> dict[str, Any]:
        return {"prompt_template": self.prompt_template}

    def _load_weights(self, folder: Path, meta: dict[str, Any] | None) -> None:
        """The model of a `save` folder or of any PaliGemma transformers folder."""
        self._install(*load_paligemma(folder, self.dtype))
