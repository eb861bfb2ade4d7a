"""Contrastive alignment of the skill space (AtomSkill eq. 8-11).

Both losses are supervised-contrastive (Khosla et al. 2020) over all B x n token
embeddings of a batch, L2-normalised, with temperature τ (0.1):

    L = mean over anchors i with P(i) non-empty of
        -1/|P(i)| Σ_{p in P(i)} log( exp(z_i·z_p/τ) / Σ_{a != i} exp(z_i·z_a/τ) )

- temporal  L_temp:  P(i) = tokens with the same quantised code AND the same position j;
- semantic  L_skill: P(i) = tokens with the same skill label AND the same quantised code.

The anchor itself is never its own positive nor in its denominator; anchors without
positives are excluded from the mean (the loss is 0 when no anchor has any). The
embeddings are the encoder outputs z_e (pre-quantisation), so the gradient shapes φ.
Each loss returns (scalar, metrics).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG = -1e9  # instead of -inf: keeps gradients finite when a row has a single entry


def supervised_contrastive(embeddings: jax.Array, positives: jax.Array, temperature: float
                           ) -> tuple[jax.Array, dict]:
    """embeddings [N, d]; positives [N, N] bool (the diagonal is ignored)."""
    z = embeddings.astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    n = z.shape[0]
    self_mask = jnp.eye(n, dtype=bool)
    logits = (z @ z.T) / temperature
    denominator = jax.nn.logsumexp(jnp.where(self_mask, _NEG, logits), axis=1, keepdims=True)
    log_prob = logits - denominator
    positives = positives & ~self_mask
    num_pos = positives.sum(axis=1)
    has_pos = num_pos > 0
    per_anchor = -jnp.sum(jnp.where(positives, log_prob, 0.0), axis=1) / jnp.maximum(num_pos, 1)
    num_anchors = has_pos.sum()
    loss = jnp.sum(jnp.where(has_pos, per_anchor, 0.0)) / jnp.maximum(num_anchors, 1)
    metrics = {"anchor_fraction": num_anchors / n,
               "mean_positives": jnp.sum(num_pos) / jnp.maximum(num_anchors, 1)}
    return loss, metrics


def temporal_positives(indices: jax.Array) -> jax.Array:
    """indices [B, n] -> [B*n, B*n]: same code and same token position."""
    b, n = indices.shape
    codes = indices.reshape(-1)
    position = jnp.tile(jnp.arange(n), b)
    return (codes[:, None] == codes[None, :]) & (position[:, None] == position[None, :])


def semantic_positives(indices: jax.Array, labels: jax.Array) -> jax.Array:
    """indices [B, n], labels [B] -> [B*n, B*n]: same skill label and same code."""
    b, n = indices.shape
    codes = indices.reshape(-1)
    token_labels = jnp.repeat(labels.reshape(-1), n)
    return (codes[:, None] == codes[None, :]) & (token_labels[:, None] == token_labels[None, :])


def temporal_contrastive_loss(z_e, indices, *, temperature: float):
    """L_temp over z_e [B, n, d] with quantised indices [B, n]."""
    loss, m = supervised_contrastive(z_e.reshape(-1, z_e.shape[-1]), temporal_positives(indices),
                                     temperature)
    return loss, {"contrastive_temporal": loss, **{f"temporal_{k}": v for k, v in m.items()}}


def semantic_contrastive_loss(z_e, indices, labels, *, temperature: float):
    """L_skill over z_e [B, n, d], indices [B, n] and skill labels [B]."""
    loss, m = supervised_contrastive(z_e.reshape(-1, z_e.shape[-1]),
                                     semantic_positives(indices, labels), temperature)
    return loss, {"contrastive_semantic": loss, **{f"semantic_{k}": v for k, v in m.items()}}


def contrastive_loss(z_e, indices, labels, *, temporal: bool = True, semantic: bool = True,
                     temperature: float = 0.1) -> tuple[jax.Array, dict]:
    """L_contrast = L_temp + L_skill, each switchable (model.contrastive.temporal/semantic)."""
    total, metrics = jnp.zeros((), jnp.float32), {}
    if temporal:
        loss, m = temporal_contrastive_loss(z_e, indices, temperature=temperature)
        total, metrics = total + loss, {**metrics, **m}
    if semantic:
        loss, m = semantic_contrastive_loss(z_e, indices, labels, temperature=temperature)
        total, metrics = total + loss, {**metrics, **m}
    metrics["contrastive"] = total
    return total, metrics
