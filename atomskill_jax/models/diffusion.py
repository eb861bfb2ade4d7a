"""Skill diffusion sampler ρ (AtomSkill sec. 3.3, eq. 15): generates the n skill tokens
at inference, where no demonstration of the next skill exists to encode.

Model: a 1D conv UNet (unet1d.py) over the tokens [B, n, d], FiLM-conditioned on
  [pooled observation features, skill-label embedding, diffusion-timestep embedding].
The observation features are the (frozen, stop-gradient) tokens of the stage-one
observation encoder, pooled by a trainable attention pool, so training ρ never moves
the features ψ was trained on. Targets are the quantised tokens z_q, standardised with
the codebook's mean and spread (the codebook is frozen in this stage, so this is a
fixed affine map). Training: DDPM with a cosine or linear β schedule; the UNet predicts
either the clean tokens x0 (`sampler.prediction_type="sample"`, the default) or the noise ε
("epsilon", DDPM's choice). The skill to come is close to a function of the observation, so
x0-prediction suits it: with ε-prediction the first DDIM steps recover x0 as
(x_t - √(1-ᾱ)ε̂)/√ᾱ with √ᾱ ~ 5e-4, so any error in ε̂ is multiplied by ~2000 and the
condition is lost (measured on a trained cpu model: x0 from one step matched the true code
4% of the time at t=T-1, chance; the full DDIM chain stayed at chance).
Sampling: DDIM with a configurable number of steps (η configurable, 0 = deterministic),
then each token is snapped to its nearest codebook vector.

Where the skill label comes from at test time (the paper conditions ρ on the label
but does not say): a small label head predicts the label of the skill being executed
at the current step from the same pooled observation + instruction features (trained
with cross-entropy alongside ρ; at a skill switch this is the next skill). During
training the label is replaced by a learned null label with probability
`sampler.label_dropout`, so ρ also learns the unconditional distribution and
classifier-free guidance works: ε = ε_null + g (ε_label - ε_null), g =
`sampler.guidance_scale` (1.0 = plain conditional sampling, one UNet pass).
`sampler.label_source`: "predicted" (label head argmax) or "none" (always the null
label); `sample(..., label_id=...)` also accepts given labels.

Where in the skill (our addition, `sampler.condition_on_skill_step`): ρ is trained on
every step of a segment (the target is the whole segment's tokens), yet the policy
samples only at a skill's first step. Mid-segment, the observation says little about
where the segment began, so the training distribution is broader than the one sampled
from. The pooled features therefore carry an embedding of the steps since the skill
began (clipped at `max_skill_step`): ρ and the label head learn from every step, and
sampling asks for step 0. Measured on a cpu model before the change: sampled tokens
matched the encoded ones 62% of the time at any step but 55% at skill starts.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atomskill_jax.models.layers import (EMBED_INIT, FSDP, MLP, attention, compute_dtype, dense,
                                         layer_norm, sharded, sharded_param,
                                         sinusoidal_embedding)
from atomskill_jax.models.unet1d import ConditionalUnet1D, mish

LABEL_SOURCES = ("predicted", "none")
PREDICTION_TYPES = ("sample", "epsilon")


def beta_schedule(name: str, num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02):
    """β_t for t = 0..T-1 (numpy float64): 'linear' or 'cosine' (Nichol & Dhariwal 2021).

    Linear endpoints are given for T=1000 (DDPM's 1e-4..0.02) and scaled by 1000/T,
    so a short schedule still ends in (nearly) pure noise.
    """
    if name == "linear":
        scale = 1000.0 / num_steps
        return np.linspace(beta_start * scale, min(beta_end * scale, 0.999), num_steps,
                           dtype=np.float64)
    if name == "cosine":
        s = 0.008
        f = lambda t: math.cos((t / num_steps + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        return np.array([min(1 - f(t + 1) / f(t), 0.999) for t in range(num_steps)])
    raise ValueError(f"sampler.beta_schedule must be 'cosine' or 'linear', got {name!r}")


def ddim_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
    """Descending, distinct timesteps from T-1 to 0 (at most T of them). One step is T-1:
    DDIM starts from pure noise, which only the last timestep describes (t=0 would ask
    the denoiser to treat noise as an almost clean sample)."""
    num_steps = max(1, min(int(num_steps), num_train_steps))
    if num_steps == 1:
        return np.array([num_train_steps - 1], np.int32)
    return np.unique(np.round(np.linspace(0, num_train_steps - 1, num_steps)).astype(np.int32))[::-1]


class SkillSampler(nnx.Module):
    def __init__(self, config, *, rngs: nnx.Rngs):
        cfg = config.sampler
        if cfg.label_source not in LABEL_SOURCES:
            raise ValueError(f"sampler.label_source must be one of {LABEL_SOURCES}, "
                             f"got {cfg.label_source!r}")
        prediction_type = str(cfg.get("prediction_type", "epsilon"))
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"sampler.prediction_type must be one of {PREDICTION_TYPES}, "
                             f"got {prediction_type!r}")
        self.prediction_type = prediction_type
        dtype = compute_dtype(config.dtype)
        d, c = config.d_model, int(cfg.cond_dim)
        self.pool_query = sharded_param(
            0.02 * jax.random.normal(rngs.params(), (1, d)), (None, FSDP))
        self.pool_attn = attention(config.num_heads, d, rngs=rngs, dtype=dtype)
        self.pool_norm = layer_norm(d, rngs=rngs, dtype=dtype)
        self.obs_cond = dense(d, c, rngs=rngs, dtype=dtype)
        self.num_labels = int(config.num_skill_labels)
        self.label_embed = nnx.Embed(  # last row: the null label; Embed's default initializer
            self.num_labels + 1, c, dtype=dtype, rngs=rngs,
            embedding_init=sharded(EMBED_INIT, (None, FSDP)))
        self.time_mlp = MLP(d, 4 * d, c, rngs=rngs, dtype=dtype)
        self.unet = ConditionalUnet1D(d, 3 * c, [d * int(m) for m in cfg.unet_channel_mults],
                                      kernel=int(cfg.unet_kernel), rngs=rngs, dtype=dtype)
        self.label_head = MLP(d, int(cfg.label_head_hidden), self.num_labels, rngs=rngs, dtype=dtype)
        self.max_skill_step = int(cfg.get("max_skill_step", 64))
        self.skill_step_proj = (dense(d, d, rngs=rngs, dtype=dtype)
                                if cfg.get("condition_on_skill_step", False) else None)
        self.d_model = d
        self.num_train_timesteps = int(cfg.num_train_timesteps)
        self.betas = tuple(float(b) for b in beta_schedule(  # static: part of the graph
            cfg.beta_schedule, self.num_train_timesteps, cfg.beta_start, cfg.beta_end))
        self.label_dropout = float(cfg.label_dropout)
        self.label_source = str(cfg.label_source)
        self.default_ddim_steps = int(cfg.ddim_steps)
        self.ddim_eta = float(cfg.ddim_eta)
        self.clip_x0 = float(cfg.get("clip_x0", 0.0))  # <= 0: no clipping
        self.default_guidance = float(cfg.guidance_scale)
        self.dtype = dtype

    def alphas_cumprod(self) -> jax.Array:
        return jnp.cumprod(1.0 - jnp.asarray(self.betas, jnp.float32))

    # -- conditioning -------------------------------------------------------------
    def pool(self, obs_tokens, skill_step=None) -> jax.Array:
        """Attention-pooled observation features [B, d] (from frozen tokens), plus the
        embedding of the steps since the skill began when that conditioning is on
        (`skill_step` [B]; None = 0, a skill's first step, where skills are sampled)."""
        b = obs_tokens.shape[0]
        q = jnp.broadcast_to(self.pool_query[...], (b, 1, self.d_model))
        tokens = obs_tokens.astype(self.dtype)
        pooled = self.pool_norm(self.pool_attn(q.astype(self.dtype), tokens, tokens)[:, 0])
        if self.skill_step_proj is None:
            return pooled
        step = jnp.zeros((b,), jnp.int32) if skill_step is None else skill_step
        step = jnp.clip(jnp.asarray(step, jnp.int32), 0, self.max_skill_step)
        return pooled + self.skill_step_proj(
            sinusoidal_embedding(step, self.d_model).astype(self.dtype))

    def label_logits(self, pooled) -> jax.Array:
        return self.label_head(pooled).astype(jnp.float32)

    def denoise(self, x, t, pooled, labels) -> jax.Array:
        """The UNet's output [B, n, d] for noisy tokens x at timesteps t [B]: predicted
        x0 or ε, per `prediction_type`."""
        time = self.time_mlp(sinusoidal_embedding(t, self.d_model).astype(self.dtype))
        cond = jnp.concatenate([self.obs_cond(pooled), self.label_embed(labels), time], axis=-1)
        return self.unet(x.astype(self.dtype), mish(cond)).astype(jnp.float32)

    # -- training (eq. 15) --------------------------------------------------------
    def loss(self, key, obs_tokens, x0, labels, *, train: bool,
             skill_step=None) -> tuple[jax.Array, jax.Array, dict]:
        """(x0- or ε-prediction MSE, label-head cross-entropy, metrics); x0 [B, n, d]
        standardised; `skill_step` [B]: steps since each example's skill began."""
        t_key, noise_key, drop_key = jax.random.split(key, 3)
        b = x0.shape[0]
        pooled = self.pool(obs_tokens, skill_step)
        t = jax.random.randint(t_key, (b,), 0, self.num_train_timesteps)
        noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
        ab = self.alphas_cumprod()[t][:, None, None]
        x_t = jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * noise
        labels = labels.astype(jnp.int32)
        if train and self.label_dropout > 0:
            dropped = jax.random.bernoulli(drop_key, self.label_dropout, (b,))
            cond_labels = jnp.where(dropped, self.num_labels, labels)
        else:
            cond_labels = labels
        out = self.denoise(x_t, t, pooled, cond_labels)
        target = x0 if self.prediction_type == "sample" else noise
        diffusion = jnp.mean((out - target) ** 2)
        logits = self.label_logits(pooled)
        log_probs = jax.nn.log_softmax(logits)
        ce = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))
        accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        return diffusion, ce, {"diffusion_mse": diffusion, "label_ce": ce,
                               "label_accuracy": accuracy}

    # -- sampling -----------------------------------------------------------------
    def choose_labels(self, pooled, label_id=None) -> jax.Array:
        b = pooled.shape[0]
        if label_id is not None:
            return jnp.broadcast_to(jnp.asarray(label_id, jnp.int32), (b,))
        if self.label_source == "none":
            return jnp.full((b,), self.num_labels, jnp.int32)
        return jnp.argmax(self.label_logits(pooled), axis=-1).astype(jnp.int32)

    def sample(self, key, obs_tokens, shape, *, num_steps: int | None = None,
               guidance: float | None = None, label_id=None, skill_step=None) -> jax.Array:
        """DDIM from noise to standardised tokens [B, n, d] (not yet quantised).

        `key`: one key, or typed keys [B], one per example (each row then depends on
        its own key only); `num_steps` and `guidance` are Python numbers (they shape
        the graph); `skill_step` [B]: steps since the skill began (None: 0, a new skill).
        """
        num_steps = self.default_ddim_steps if num_steps is None else int(num_steps)
        guidance = self.default_guidance if guidance is None else float(guidance)
        pooled = self.pool(obs_tokens, skill_step)
        labels = self.choose_labels(pooled, label_id)
        b = shape[0]
        if guidance != 1.0:  # conditional and null-label passes in one batch
            pooled = jnp.concatenate([pooled, pooled])
            labels = jnp.concatenate([labels, jnp.full((b,), self.num_labels, jnp.int32)])
        ab = self.alphas_cumprod()
        steps = ddim_timesteps(self.num_train_timesteps, num_steps)
        prev = np.append(steps[1:], -1)
        if _per_example(key, b):
            # One key per example (typed keys [B]): a row's draw depends on its own key
            # only, whatever else shares the batch (the server batches connections).
            pairs = jax.vmap(jax.random.split)(key)
            noise_key, step_key = pairs[:, 0], pairs[:, 1]

            def normal(k, like_shape):
                return jax.vmap(lambda kk: jax.random.normal(kk, like_shape[1:], jnp.float32))(k)

            step_keys = jnp.swapaxes(
                jax.vmap(lambda k: jax.random.split(k, len(steps)))(step_key), 0, 1)
        else:
            noise_key, step_key = jax.random.split(key)

            def normal(k, like_shape):
                return jax.random.normal(k, like_shape, jnp.float32)

            step_keys = jax.random.split(step_key, len(steps))
        x = normal(noise_key, shape)

        def step(x, inputs):
            t, t_prev, k = inputs
            a_t = ab[t]
            a_prev = jnp.where(t_prev >= 0, ab[jnp.maximum(t_prev, 0)], 1.0)
            x_in = jnp.concatenate([x, x]) if guidance != 1.0 else x
            out = self.denoise(x_in, jnp.full((x_in.shape[0],), t), pooled, labels)
            if guidance != 1.0:
                out_cond, out_null = jnp.split(out, 2)
                out = out_null + guidance * (out_cond - out_null)
            if self.prediction_type == "sample":
                x0 = out
            else:
                x0 = (x - jnp.sqrt(1.0 - a_t) * out) / jnp.sqrt(a_t)
            if self.clip_x0 > 0:
                x0 = jnp.clip(x0, -self.clip_x0, self.clip_x0)
            eps = (x - jnp.sqrt(a_t) * x0) / jnp.sqrt(1.0 - a_t)  # the noise consistent with x0
            sigma = self.ddim_eta * jnp.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
            direction = jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma ** 2, 0.0)) * eps
            x = jnp.sqrt(a_prev) * x0 + direction + sigma * normal(k, x.shape)
            return x, None

        x, _ = jax.lax.scan(step, x, (jnp.asarray(steps), jnp.asarray(prev, jnp.int32),
                                      step_keys))
        return x


def _per_example(key, batch: int) -> bool:
    """True for a batch of typed keys [B] (one per example); False for one key."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if typed and key.ndim == 1:
        if key.shape[0] != batch:
            raise ValueError(f"{key.shape[0]} per-example keys for a batch of {batch}")
        return True
    return False


def codebook_standardisation(codebook: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean [d], scale scalar) mapping code vectors to roughly unit variance."""
    codebook = jax.lax.stop_gradient(codebook.astype(jnp.float32))
    mean = codebook.mean(axis=0)
    scale = jnp.maximum(jnp.sqrt(jnp.mean((codebook - mean) ** 2)), 1e-6)
    return mean, scale
