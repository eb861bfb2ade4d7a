"""The assembled AtomSkill model (Learning Semantic Atomic Skills for Multi-Task Robotic
Manipulation, sec. 3.2-3.3) and its training contract.

Stages (`compute_loss(..., stage=)`):
- 'skill'  : φ (skill encoder) + VQ + ψ (action decoder) + contrastive alignment:
             L = w_vq L_VQ + β1 L_a + β2 (L_temp + L_skill) + w_kp L_keypose.
- 'sampler': ρ (diffusion sampler) + label head on the frozen skill space; φ, VQ and the
             observation encoder run under stop_gradient. Train only the `sampler`
             sub-module in this stage (`trainable_filter('sampler')`).

State: Params, plus `CodebookState` variables (VQ usage EMA and recent encodings) that
`compute_loss(train=True, stage='skill')` updates in place; carry all of `nnx.state`
through the train step, optimise `trainable_filter(stage)` only. Modules keep no RNG
state: all randomness comes from the `rng` argument.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atomskill_jax.data import fake_batches
from atomskill_jax.methods.atomskill.action_decoder import ActionDecoder
from atomskill_jax.models.chunk_losses import action_l1, keypose_l1
from atomskill_jax.methods.atomskill.contrastive import contrastive_loss
from atomskill_jax.models.diffusion import SkillSampler, codebook_standardisation
from atomskill_jax.models.obs_encoders import ObservationEncoder
from atomskill_jax.methods.atomskill.skill_encoder import SkillEncoder
from atomskill_jax.models.vector_quantizer import CodebookState, VectorQuantizer

STAGES = ("skill", "sampler")


def trainable_filter(stage: str):
    """The nnx filter of parameters trained in `stage` (the rest stay frozen)."""
    if stage == "skill":
        return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("sampler")))
    if stage == "sampler":
        return nnx.All(nnx.Param, nnx.PathContains("sampler"))
    raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


KEYPOSE_FRAMES = ("absolute", "relative")


def keypose_frame(config) -> str:
    """The model config's `decoder.keypose_frame` (config.py), checked."""
    frame = str(config.decoder.get("keypose_frame", "absolute"))
    if frame not in KEYPOSE_FRAMES:
        raise ValueError(f"model.decoder.keypose_frame must be one of {KEYPOSE_FRAMES}, "
                         f"got {frame!r}")
    return frame


class AtomSkill(nnx.Module):
    def __init__(self, config, *, rngs: nnx.Rngs):
        self.obs_encoder = ObservationEncoder(config, rngs=rngs)
        self.skill_conditioning = bool(config.decoder.skill_conditioning)
        if self.skill_conditioning:
            self.skill_encoder = SkillEncoder(config, rngs=rngs)
            self.vq = VectorQuantizer(config, rngs=rngs)
            self.sampler = SkillSampler(config, rngs=rngs)
        else:  # ACT-like baseline: no skill space, nothing to sample
            self.skill_encoder = self.vq = self.sampler = None
        self.decoder = ActionDecoder(config, rngs=rngs)
        self.predict_keypose = bool(config.decoder.predict_keypose)
        self.keypose_frame = keypose_frame(config)
        w = config.loss_weights
        self.weights = {k: float(w[k]) for k in w}  # plain floats: static, hashable graph data
        c = config.contrastive
        self.contrastive = (bool(c.temporal), bool(c.semantic), float(c.temperature))
        self.num_tokens = int(config.skill_encoder.num_tokens)
        self.token_corruption = float(config.decoder.get("skill_token_corruption", 0.0))
        self.chunk_rule = str(config.decoder.get("chunk_rule", "start"))
        if self.chunk_rule not in ("segment", "start"):
            raise ValueError(f"model.decoder.chunk_rule={self.chunk_rule!r}; use 'segment' (the "
                             f"paper's equation 2) or 'start'")
        if not 0.0 <= self.token_corruption <= 1.0:
            raise ValueError("decoder.skill_token_corruption is a probability in [0, 1], "
                             f"got {self.token_corruption}")
        self.d_model = int(config.d_model)

    # -- losses -------------------------------------------------------------------
    def compute_loss(self, rng, batch, *, train: bool, stage: str = "skill"):
        """(total loss, metrics dict of scalars) for one batch (see module docstring)."""
        if stage == "skill":
            return self._skill_loss(rng, batch, train=train)
        if stage == "sampler":
            return self._sampler_loss(rng, batch, train=train)
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")

    def _skill_loss(self, rng, batch, *, train: bool):
        rngs = nnx.Rngs(dropout=rng)
        w = self.weights
        obs = self.obs_encoder(batch["observation"], batch["language_embedding"], train=train,
                               rngs=rngs)
        total, metrics, skill_tokens = jnp.zeros((), jnp.float32), {}, None
        if self.skill_conditioning:
            z_e = self.skill_encoder(batch["skill"]["actions"], train=train, rngs=rngs)
            q = self.vq(z_e, update_state=train)
            skill_tokens = q.straight_through
            if train and self.token_corruption > 0:
                skill_tokens = self._corrupt_tokens(jax.random.fold_in(rng, 7), skill_tokens)
            total += w["vq"] * q.loss
            metrics.update(q.metrics, vq=q.loss)
            temporal, semantic, temperature = self.contrastive
            if temporal or semantic:
                c_loss, c_metrics = contrastive_loss(
                    z_e, q.indices, batch["skill"]["label_id"], temporal=temporal,
                    semantic=semantic, temperature=temperature)
                total += w["contrastive"] * c_loss
                metrics.update(c_metrics)
        chunk, keypose = self.decoder(obs, skill_tokens, train=train, rngs=rngs)
        a_loss, a_metrics = action_l1(chunk, batch["action_chunk"], self._chunk_mask(batch))
        total += w["action"] * a_loss
        metrics.update(a_metrics)
        if self.predict_keypose:
            target = batch["keypose"]
            if self.keypose_frame == "relative":  # normalised: n(k) - n(a_abs[t])
                target = target - batch["keypose_base"]
            k_loss, k_metrics = keypose_l1(keypose, target)
            total += w["keypose"] * k_loss
            metrics.update(k_metrics)
        metrics["loss"] = total
        return total, metrics

    def _chunk_mask(self, batch) -> jax.Array:
        """[B, H]: the chunk steps the action loss counts (see config `chunk_rule`)."""
        mask = batch["action_chunk_mask"]
        if self.skill_conditioning and self.chunk_rule == "segment":
            steps = batch["timestep"][:, None] + jnp.arange(mask.shape[1])[None, :]
            mask = mask & (steps <= batch["skill"]["end"][:, None])
        return mask

    def _sampler_loss(self, rng, batch, *, train: bool):
        self._require_skills("the sampler stage")
        sg = jax.lax.stop_gradient
        obs = sg(self.obs_encoder(batch["observation"], batch["language_embedding"]))
        z_e = sg(self.skill_encoder(batch["skill"]["actions"]))
        codes, indices = self.vq.quantize(z_e)
        mean, scale = codebook_standardisation(self.vq.codebook[...])
        x0 = (sg(codes) - mean) / scale
        skill_step = batch["timestep"] - batch["skill"]["start"]
        diffusion, ce, metrics = self.sampler.loss(rng, obs, x0, batch["skill"]["label_id"],
                                                   train=train, skill_step=skill_step)
        total = self.weights["diffusion"] * diffusion + self.weights["label_head"] * ce
        metrics["loss"] = total
        return total, metrics

    def _corrupt_tokens(self, key, tokens):
        """Each skill token replaced, with probability `decoder.skill_token_corruption`,
        by a uniformly drawn codebook vector (ψ's input only; φ and VQ see the true
        segment). At test time ψ gets tokens from ρ, which match the encoder's only in
        part; trained on teacher-forced tokens alone, ψ trusted them over the observation
        (closing the gripper above the object when a sampled token was off)."""
        mask_key, code_key = jax.random.split(key)
        b, n = tokens.shape[:2]
        codebook = jax.lax.stop_gradient(self.vq.codebook[...])
        random_codes = codebook[jax.random.randint(code_key, (b, n), 0, codebook.shape[0])]
        corrupt = jax.random.bernoulli(mask_key, self.token_corruption, (b, n))[..., None]
        return jnp.where(corrupt, random_codes.astype(tokens.dtype), tokens)

    # -- inference ----------------------------------------------------------------
    def encode_skill(self, batch, train: bool = False):
        """Quantised skill tokens [B, n, d] and their code indices [B, n] of batch['skill']."""
        self._require_skills("encode_skill")
        codes, indices = self.vq.quantize(self.skill_encoder(batch["skill"]["actions"], train=train))
        return codes, indices

    def sample_skill(self, rng, observation, language_embedding, num_steps: int | None = None,
                     guidance: float | None = None, *, label_id=None, skill_step=None):
        """Skill tokens [B, n, d] sampled by ρ (DDIM) and snapped onto the codebook;
        `skill_step` [B] re-samples the current skill that many steps in (None: new)."""
        self._require_skills("sample_skill")
        obs = self.obs_encoder(observation, language_embedding)
        b = obs.shape[0]
        x = self.sampler.sample(rng, obs, (b, self.num_tokens, self.d_model), num_steps=num_steps,
                                guidance=guidance, label_id=label_id, skill_step=skill_step)
        mean, scale = codebook_standardisation(self.vq.codebook[...])
        codes, _ = self.vq.quantize(x * scale + mean)
        return codes

    def predict_actions(self, observation, language_embedding, skill_tokens=None):
        """(action chunk [B, H, A], keypose [B, A] or None when keypose prediction is off)."""
        obs = self.obs_encoder(observation, language_embedding)
        return self.decoder(obs, skill_tokens if self.skill_conditioning else None)

    def reinit_dead_codes(self, rng) -> dict:
        """Replace dead codes by recent encoder outputs (call every N training steps)."""
        self._require_skills("reinit_dead_codes")
        return self.vq.reinit_dead_codes(rng)

    def _require_skills(self, what: str):
        if not self.skill_conditioning:
            raise ValueError(f"{what} needs the skill space, but decoder.skill_conditioning is "
                             f"False (the ACT-like baseline)")


def fake_batch(config, batch_size: int, *, action_dim: int | None = None,
               proprio_dim: int | None = None, state_dim: int | None = None, cameras=None,
               image_size=None, seed: int = 0) -> dict:
    """A numpy batch with the input pipeline's structure (dims default to the model
    config's; see data/fake_batches.py)."""
    batch = fake_batches.default_example_batch(
        batch_size, action_dim=config.action_dim if action_dim is None else action_dim,
        proprio_dim=config.proprio_dim if proprio_dim is None else proprio_dim,
        state_dim=config.state_dim if state_dim is None else state_dim,
        language_dim=int(config.language_dim),
        cameras=tuple(config.cameras if cameras is None else cameras),
        image_size=tuple(config.image_size if image_size is None else image_size),
        horizon=int(config.horizon), skill_length=int(config.skill_length),
        num_labels=int(config.num_skill_labels), seed=seed)
    if keypose_frame(config) == "relative":  # the target the keypose is relative to
        batch["keypose_base"] = np.random.default_rng(seed + 1).normal(
            size=batch["keypose"].shape).astype(np.float32)
    return batch


__all__ = ["AtomSkill", "CodebookState", "KEYPOSE_FRAMES", "STAGES", "fake_batch",
           "keypose_frame", "trainable_filter"]
