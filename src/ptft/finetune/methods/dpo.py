"""``dpo``: direct preference optimisation (Rafailov et al. 2023) on prompt/chosen/rejected pairs.

For a pair, with summed response log-probabilities (prompt masked, EOS included) of the policy
π and the reference model π_ref::

    r⁺ = β (log π(y⁺|x) − log π_ref(y⁺|x)),   r⁻ = β (log π(y⁻|x) − log π_ref(y⁻|x))
    loss = −log σ(r⁺ − r⁻)

averaged over the pairs of an optimizer step (the loop divides the summed loss by the step's
pairs, :func:`ptft.finetune.batching.step_weight`). This is TRL's ``DPOTrainer`` with its defaults
(``loss_type="sigmoid"``, no label smoothing); ``tests/unit/test_dpo.py`` checks loss, rewards and
gradients against it.

The reference is the run's starting point: the checkpoint, or the parent run's model for DPO
from an SFT run (``finetune.per_task.<task>.from``). ``dpo.reference`` chooses how it is computed:

- ``cached`` (default): each pair's reference log-probabilities are computed once before training,
  with the starting weights, and carried with the pair (kept in the state folder, so a resumed run
  does not recompute them). One forward pass per pair in all instead of one per pair per epoch,
  and no second model in memory; ``docs/finetuning.md`` gives the measured ratio.
- ``frozen``: a frozen copy of the starting model scores every micro-batch again, as TRL does
  without ``precompute_ref_log_probs``.
"""

from __future__ import annotations

import copy
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Literal

from ptft.finetune.methods.base import Method, RunInputs

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference_logps.pt"


@dataclass(frozen=True)
class DpoConfig:
    """``finetune.dpo`` (and ``finetune.per_task.<task>.dpo``)."""

    beta: float = field(
        default=0.1, metadata={"help": "β: the inverse temperature of the implicit reward", "exclusive_minimum": 0}
    )
    reference: Literal["cached", "frozen"] = field(
        default="cached",
        metadata={"help": "cached: reference log-probs computed once per pair; frozen: a frozen copy of the model"},
    )
    batch_size: int = field(
        default=16, metadata={"help": "pairs per forward pass when caching the reference log-probs", "minimum": 1}
    )


@dataclass
class _Run:
    beta: float
    reference: object | None  # the frozen model, or None when the pairs carry their reference


# The settings of each model being trained, for the loss (whose signature is the loop's, model and batch only).
_RUNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def dpo_terms(chosen, rejected, ref_chosen, ref_rejected, beta: float):
    """Per-pair losses and the implicit rewards of the chosen and the rejected responses."""
    import torch.nn.functional as F

    chosen_rewards = beta * (chosen - ref_chosen)
    rejected_rewards = beta * (rejected - ref_rejected)
    return -F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards, rejected_rewards


def reference_logps(model, pairs: list, batch_size: int, device, precision: str = "fp32"):
    """``[len(pairs), 2]`` summed log-probabilities of (chosen, rejected) under ``model`` as it is now."""
    import torch
    from tqdm import tqdm

    from ptft.finetune.batching import collate
    from ptft.finetune.loss import sequence_logps

    was_training = model.training
    model.eval()
    pad_id = getattr(model.config, "pad_token_id", None) or 0
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
    out = []
    with torch.no_grad(), autocast:
        for start in tqdm(range(0, len(pairs), batch_size), desc="dpo reference log-probs", mininterval=5):
            part = pairs[start : start + batch_size]
            logps = sequence_logps(model, collate(part, "grouped", pad_id, device), fast=False)
            out.append(torch.stack([logps[: len(part)], logps[len(part) :]], 1).double().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 2, dtype=torch.float64)


class DPO(Method):
    name = "dpo"
    task_kinds = ("preference",)
    config = DpoConfig

    def encode(self, tokenizer, dataset, records: list[dict], cfg: dict) -> list:
        from ptft.finetune.batching import Pair

        pairs = self.encode_responses(tokenizer, dataset, records, cfg, ("chosen", "rejected"))
        return [Pair(p["chosen"], p["rejected"]) for p in pairs]

    def prepare(self, model, run: RunInputs):
        settings = run.cfg["dpo"]
        if settings["reference"] == "frozen":
            reference = copy.deepcopy(model).eval().requires_grad_(False)
            _RUNS[model] = _Run(settings["beta"], reference)
            return model, {"dpo_reference": "frozen"}
        _RUNS[model] = _Run(settings["beta"], None)
        t = time.time()
        cached = self._cached_references(model, run)
        for split, examples in (("train", run.examples), ("validation", run.validation_examples)):
            for pair, (c, r) in zip(examples, cached[split].tolist(), strict=True):
                pair.reference = (c, r)
        return model, {"dpo_reference": "cached", "dpo_reference_time_s": time.time() - t}

    def _cached_references(self, model, run: RunInputs) -> dict:
        """The reference log-probs of the training and validation pairs: from the state folder when the run
        resumes (a pass over every pair saved), else computed now, with the starting weights, and kept there."""
        import torch

        from ptft import io
        from ptft.finetune.sharded import world

        path = run.state_dir / REFERENCE_FILE if run.state_dir is not None else None
        sizes = {"train": len(run.examples), "validation": len(run.validation_examples)}
        if run.resuming and path is not None and path.exists():
            saved = torch.load(path, weights_only=True)
            if {k: len(v) for k, v in saved.items()} == sizes:
                log.info("dpo: reference log-probs of %d pairs read from %s", sizes["train"], path)
                return saved
        batch, precision = run.cfg["dpo"]["batch_size"], run.cfg.get("precision", "fp32")
        splits = {"train": run.examples, "validation": run.validation_examples}
        cached = {split: reference_logps(model, pairs, batch, run.device, precision) for split, pairs in splits.items()}
        if path is not None and world().main:  # each process of a sharded run computed the same; one writes
            with io.atomic_path(path) as tmp:
                torch.save(cached, tmp)
        return cached

    def loss(self, model, batch: dict, fast: bool, kept=None):
        """Summed DPO loss of the micro-batch's pairs."""
        import torch

        from ptft.finetune.loss import sequence_logps

        run = _RUNS.get(model)
        if run is None:
            raise RuntimeError("dpo: the model was not prepared by DPO.prepare (no β and reference for it)")
        n = batch["n_pairs"]
        logps = sequence_logps(model, batch, fast, kept)
        reference = batch.get("reference")
        if reference is None:
            if run.reference is None:
                raise RuntimeError("dpo: a batch without cached reference log-probs and no frozen reference model")
            with torch.no_grad():
                ref = sequence_logps(run.reference, batch, fast=False)
            reference = torch.stack([ref[:n], ref[n:]], 1)
        reference = reference.to(logps.dtype)
        losses, _, _ = dpo_terms(logps[:n], logps[n:], reference[:, 0], reference[:, 1], run.beta)
        return losses.sum()
