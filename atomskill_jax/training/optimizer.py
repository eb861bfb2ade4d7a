"""The optimiser: AdamW with warmup and a cosine (or constant) schedule, gradient
clipping by global norm. Config (`config.optim`):

  lr 1e-4, weight_decay 1e-5, b1 0.9, b2 0.999, eps 1e-8,
  schedule "cosine" | "constant", warmup_steps, min_lr_ratio (cosine floor), clip_norm
  (<= 0: no clipping).

Weight decay skips 1-D parameters (biases, norm scales, codebook rows are 2-D and do
decay as in the paper's plain AdamW) because decaying a LayerNorm scale to zero only
fights the loss.
"""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
    lr, warmup = float(config.lr), int(config.get("warmup_steps", 0))
    kind = config.get("schedule", "cosine")
    if kind == "constant":
        main = optax.constant_schedule(lr)
    elif kind == "cosine":
        decay_steps = max(int(total_steps) - warmup, 1)
        main = optax.cosine_decay_schedule(lr, decay_steps,
                                           alpha=float(config.get("min_lr_ratio", 0.0)))
    else:
        raise ValueError(f"config.optim.schedule={kind!r}: expected 'cosine' or 'constant'")
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _decay_mask(params):
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) > 1, params)


def make_optimizer(config, total_steps: int):
    """(optax transformation, schedule) for `total_steps` updates."""
    schedule = learning_rate_schedule(config, total_steps)
    parts = []
    if float(config.get("clip_norm", 0.0)) > 0:
        parts.append(optax.clip_by_global_norm(float(config.clip_norm)))
    parts.append(optax.adamw(schedule, b1=float(config.get("b1", 0.9)),
                             b2=float(config.get("b2", 0.999)),
                             eps=float(config.get("eps", 1e-8)),
                             weight_decay=float(config.weight_decay), mask=_decay_mask))
    return optax.chain(*parts), schedule
