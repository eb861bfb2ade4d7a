"""USR (methods/usr/): Stage I under `stage1/`, Stage II under `stage2/`, and (scene encoder
"clip") the frozen CLIP towers under `clip/`, trained by no stage.

Stage 'pretrain' (eq. 4) alternates the two pathways on `model.alternate = (n_vl, n_act)`:
steps s with s mod (n_vl + n_act) < n_vl train the visuo-linguistic pathway, the others
the action pathway. Only the active pathway is computed (`nnx.cond` on the traced step),
so a step costs one pathway. What each step's gradient reaches:
  vl step   E_task (scene encoder + fusion, both frames), E_trans, the codebook (through
            NSVQ's ‖x − q‖ term), D_act.            E_act: exactly zero.
  act step  E_act, the codebook, D_act.  E_task and E_trans: exactly zero (D_act reads
            f_vl_t under stop_gradient, so the action pathway cannot move the task encoder).
The shared codebook and D_act therefore see both pathways, on alternate steps.
Metrics: `recon` (active pathway), `recon_vl` / `recon_act` (0 on the other pathway's
steps: divide a window's mean by the mean of `vl_step` / 1 - `vl_step`), codebook metrics.

Stage 'adapt' (eq. 5): L = NLL of the Gaussian policy + alpha * CE(prior logits, index of
the frozen encoder's code given o_t and o_{t+H}); the policy is conditioned on sg(z) of
that code (teacher forcing). At inference z is the prior's argmax code (see `predict`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from atomskill_jax.methods.usr.config import POLICY_CONDITIONS
from atomskill_jax.methods.usr.scene import check_kind, clip_sizes
from atomskill_jax.methods.usr.stage1 import SkillModel
from atomskill_jax.methods.usr.stage2 import Adapter

STAGES = ("pretrain", "adapt")


def alternate_schedule(m) -> tuple[int, int]:
    try:
        n_vl, n_act = (int(n) for n in tuple(m.alternate))
    except (TypeError, ValueError):
        raise ValueError(f"model.alternate must be (n_vl, n_act), got {m.alternate!r}") from None
    if n_vl < 0 or n_act < 0 or n_vl + n_act == 0:
        raise ValueError(f"model.alternate={m.alternate!r}: steps must be >= 0, not both 0")
    return n_vl, n_act


def code_vectors(codebook, k: int, d: int) -> jax.Array:
    """The codebook's [K, dim] code matrix (its only Param of that shape)."""
    found = [v for v in jax.tree.leaves(nnx.state(codebook, nnx.Param)) if v.shape == (k, d)]
    if len(found) != 1:
        raise ValueError(f"the NSVQ module holds {len(found)} Params of shape {(k, d)}; "
                         "expected exactly one (its codes)")
    return found[0]


class USR(nnx.Module):
    def __init__(self, m, *, rngs: nnx.Rngs):
        kind = check_kind(m)
        if str(m.policy_condition) not in POLICY_CONDITIONS:
            raise ValueError(f"model.policy_condition must be one of {POLICY_CONDITIONS}, "
                             f"got {m.policy_condition!r}")
        self.alternate = alternate_schedule(m)
        self.alpha = float(m.alpha)
        self.skill = str(m.policy_condition) == "skill"
        if kind == "clip":
            from atomskill_jax.models.clip_loading import load_clip

            self.clip = load_clip(str(m.clip_dir))
        else:
            self.clip = None
        hidden, patches = clip_sizes(self.clip)
        self.stage1 = SkillModel(m, rngs=rngs, clip_hidden=hidden, clip_patches=patches)
        self.num_codes, self.code_dim = int(m.num_codes), int(m.dim)
        self.stage2 = Adapter(m, rngs=rngs, clip_hidden=hidden, clip_patches=patches)

    # ---- Stage I
    def pretrain_loss(self, rng, batch, *, step, train: bool):
        n_vl, n_act = self.alternate

        def run(pathway):
            def fn(model):
                return model.stage1.pathway_loss(pathway, batch, rng, clip=model.clip, train=train)
            return fn

        if n_act == 0 or n_vl == 0:
            is_vl = jnp.asarray(n_act == 0)
            loss, metrics = run("vl" if n_act == 0 else "act")(self)
        else:
            is_vl = (jnp.asarray(step, jnp.int32) % (n_vl + n_act)) < n_vl
            loss, metrics = nnx.cond(is_vl, run("vl"), run("act"), self)
        out = {f"codebook/{k}": v for k, v in metrics.items()}
        zero = jnp.zeros_like(loss)
        out.update(recon=loss, recon_vl=jnp.where(is_vl, loss, zero),
                   recon_act=jnp.where(is_vl, zero, loss), vl_step=is_vl.astype(jnp.float32))
        return loss, out

    def replace_unused(self, rng) -> dict:
        return dict(self.stage1.codebook.replace_unused(rng))

    # ---- Stage II
    def adapt_loss(self, rng, batch, *, train: bool):
        s2 = self.stage2
        rngs = nnx.Rngs(dropout=rng)
        hist, lang = s2.history(batch["observation_history"], batch["language_embedding"],
                                clip=self.clip)
        metrics, loss = {}, 0.0
        if self.skill:
            z, index = self.stage1.code(batch, clip=self.clip)
            logits = s2.prior(hist, lang, train=train, rngs=rngs)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, index).mean()
            loss = self.alpha * ce
            metrics.update(prior_ce=ce, prior_accuracy=jnp.mean(
                (jnp.argmax(logits, -1) == index).astype(jnp.float32)))
            condition = z
        else:
            condition = batch["language_embedding"]
        from atomskill_jax.models.gaussian_head import gaussian_nll

        mean, log_std = s2.policy(hist, condition, train=train, rngs=rngs)
        nll, head_metrics = gaussian_nll(mean, log_std, batch["action_chunk"],
                                         batch["action_chunk_mask"])
        metrics.update({f"policy/{k}": v for k, v in head_metrics.items()})
        metrics["policy_nll"] = nll
        return loss + nll, metrics

    def compute_loss(self, rng, batch, *, stage: str, step=0, train: bool = True):
        if stage == "pretrain":
            loss, metrics = self.pretrain_loss(rng, batch, step=step, train=train)
        elif stage == "adapt":
            loss, metrics = self.adapt_loss(rng, batch, train=train)
        else:
            raise ValueError(f"USR has stages {STAGES}, got {stage!r}")
        return loss, dict(metrics, loss=loss)

    def prior_code(self, history, language):
        """(prior logits [B, K], argmax code index [B]) from the history alone."""
        hist, lang = self.stage2.history(history, language, clip=self.clip)
        logits = self.stage2.prior(hist, lang)
        return logits, jnp.argmax(logits, -1)

    def predict(self, history, language):
        """(mean chunk [B, H, A] (normalised), code index [B] or -1): the policy runtime's
        call. z is the prior's most likely code (argmax, not a sample): the runtime is then
        deterministic, and the prior's mode is the skill the data makes most likely."""
        hist, lang = self.stage2.history(history, language, clip=self.clip)
        if self.skill:
            index = jnp.argmax(self.stage2.prior(hist, lang), -1)
            condition = code_vectors(self.stage1.codebook, self.num_codes, self.code_dim)[index]
        else:
            index = jnp.full((hist.shape[0],), -1, jnp.int32)
            condition = language
        mean, _ = self.stage2.policy(hist, condition)
        return mean, index
