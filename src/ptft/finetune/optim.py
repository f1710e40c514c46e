"""The optimizers and learning-rate schedules a run can name (``finetune.optimizer``, ``finetune.schedule``).

A schedule is a function ``(step, total, warmup, floor) -> multiplier of the peak lr`` at optimizer
step ``step`` (from 0); ``floor`` is ``finetune.min_lr_ratio``, the multiplier a decaying schedule
ends at. Adding one is one entry in :data:`SCHEDULES` and its name in the schema's enum.
"""

from __future__ import annotations

import math

import torch


def linear(step: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """Linear warmup over ``warmup`` steps, then linear decay to ``floor`` (0: to 0 at the last step).
    Unlike ``transformers``' ``get_linear_schedule_with_warmup``, the first step already trains (at
    ``1 / warmup`` of the peak) instead of running at lr 0."""
    if step < warmup:
        return (step + 1) / warmup
    return floor + (1 - floor) * max(0.0, (total - step) / max(1, total - warmup))


def constant(step: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """Linear warmup over ``warmup`` steps, then the peak lr to the end (Ren & Sutherland's release)."""
    return min(1.0, (step + 1) / warmup) if warmup else 1.0


def cosine(step: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """Linear warmup over ``warmup`` steps, then a half cosine from the peak down to ``floor`` at the
    last step (Jain et al.: 20 % warmup, floor 0.01 = "100 x lower than the maximum")."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


SCHEDULES = {"linear": linear, "constant": constant, "cosine": cosine}


def warmup_steps(total: int, cfg: dict) -> int:
    """Warmup steps of a run of ``total`` optimizer steps: ``warmup_steps`` if set (at most ``total``),
    else ``warmup_ratio × total``, rounded, at least 1."""
    if cfg.get("warmup_steps") is not None:
        return max(1, min(cfg["warmup_steps"], total))
    return max(1, round(cfg["warmup_ratio"] * total))


def make_optimizer(params: list[torch.Tensor], cfg: dict, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """``finetune.optimizer``: ``adamw`` (default) or ``rmsprop`` (torch's defaults, as Ren & Sutherland's release)."""
    name = cfg.get("optimizer", "adamw")
    if name == "adamw":
        # The fused kernel updates all parameters in one pass over memory; on CPU it is about 6x
        # faster than the default for-each one, which makes the optimizer step the bottleneck.
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg["weight_decay"], fused=device.type in ("cpu", "cuda"))
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=cfg["weight_decay"])
    raise ValueError(f"finetune.optimizer: unknown optimizer {name!r}; allowed: adamw, rmsprop")


def lr_multiplier(step: int, total: int, warmup: int, cfg: dict) -> float:
    name = cfg.get("schedule", "linear")
    if name not in SCHEDULES:
        raise ValueError(f"finetune.schedule: unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](step, total, warmup, cfg.get("min_lr_ratio", 0.0))
