"""The AtomSkill model config (`config.model` of configs/atomskill.py).

`default_model_config()` is the paper model (Table 9): d_model 256, 8 heads, n=8 skill
tokens, K=32 codes, φ 6 layers, ψ 7+7 layers, H=32, front and wrist cameras at 224px
through ResNet-18/GroupNorm (the camera list is empty here: the trainer fills
`cameras`, `image_size`, `action_dim`, `proprio_dim`, `state_dim` from the data).
d_model is not in the paper's table; 256 with an MLP of 1024 is our choice.
"""

from __future__ import annotations

import ml_collections

from atomskill_jax.skills.vocabulary import LABELS


def default_model_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Sizes shared by every component.
    c.d_model = 256
    c.num_heads = 8
    c.mlp_dim = 1024
    c.dropout = 0.1
    c.dtype = "float32"  # activations: "float32" | "bfloat16" (parameters stay float32)

    # Filled by the trainer from the data (placeholders here).
    c.action_dim = 7
    c.proprio_dim = 8
    c.state_dim = 0  # 0: no observation/state input
    c.language_dim = 384  # all-MiniLM-L6-v2 sentence embeddings
    c.cameras = ()  # e.g. ("front", "wrist"): reads observation/image_<camera>
    c.image_size = (224, 224)  # (height, width); informational (tokens follow the input)
    c.horizon = 32  # H: action chunk length (tie to data.horizon)
    c.skill_length = 64  # L: resampled skill length (tie to data.skill_resample_length)
    c.num_skill_labels = len(LABELS)

    c.observation = ml_collections.ConfigDict({
        "resnet_width": 64,  # ResNet-18: stage widths 64, 128, 256, 512
        "resnet_stage_sizes": (2, 2, 2, 2),
        "shared_image_encoder": False,  # one ResNet for all cameras instead of one each
        "low_dim_hidden": 256,  # proprio/state MLP hidden width
        # Widths of a deep MLP over [proprio, state, language] giving one extra token;
        # () = off (the paper: one token per input). See obs_encoders.py.
        "joint_low_dim_hidden": (),
    })
    c.skill_encoder = ml_collections.ConfigDict({
        "num_tokens": 8,  # n
        "num_layers": 6,
        "conv_kernel": 5,
    })
    c.vq = ml_collections.ConfigDict({
        "codebook_size": 32,  # K
        "commitment": 0.25,  # λ
        "usage_decay": 0.99,  # EMA of each code's share of assignments
        "dead_usage_fraction": 0.01,  # dead: usage EMA below this fraction of 1/K
        "recent_buffer_size": 1024,  # encoder outputs kept for dead-code re-initialisation
    })
    c.contrastive = ml_collections.ConfigDict({
        "temporal": True,  # L_temp: same code, same position
        "semantic": True,  # L_skill: same label, same code
        "temperature": 0.1,
    })
    c.decoder = ml_collections.ConfigDict({
        "fusion_layers": 7,  # block one: observation tokens x skill tokens
        "action_layers": 7,  # block two: positional queries x fused observation
        "skill_conditioning": True,  # False: ACT-like baseline without skill tokens
        "predict_keypose": True,
        # Training only: each skill token fed to ψ is replaced by a random code with this
        # probability, so ψ stays usable with imperfectly sampled skills (not in the paper;
        # see AtomSkill._corrupt_tokens). 0 = the paper.
        "skill_token_corruption": 0.0,
        # Which actions of a chunk a[t:t+H-1] the decoder learns under the skill of step
        # t. "segment" (the paper's equation 2: the chunk belongs to the segment that
        # contains it): only the steps up to the end of t's segment; the rest, the next
        # skill's actions, are masked out of the loss (a segment shorter than H, or t
        # near its end, trains the steps it has, at least a[t]). "start" (this project
        # before): the whole chunk, so in a segment's last H-1 steps the decoder learned
        # the next skill's actions from the current skill's tokens. Skill-less models
        # (the ACT-like baseline) always learn the whole chunk.
        "chunk_rule": "segment",
        # The keypose trigger (calibration.py, runtime.py): which action dimensions it
        # compares (None: the whole action, the paper's ||a - k||; e.g. (0, 1, 2) for
        # MetaWorld's hand position without the gripper command), and the per-skill step
        # cap as 1.5 x this percentile of training segment lengths (100: the longest).
        "trigger_dims": None,
        "skill_cap_quantile": 100.0,
        # What the keypose head predicts. "absolute" (the paper): the skill's terminal
        # pose k. "relative": k - action_abs[t], the way from the step's own absolute
        # target to k (in action_abs-normalised units); the policy adds it to the target
        # of the action executed at the query step. The absolute head memorises training
        # layouts (its error on evaluation-layout demonstrations is 3-4x that on the
        # training ones, even at a skill's last step, where k is the current target);
        # an offset that shrinks to 0 at the skill's end does not need to.
        "keypose_frame": "absolute",
        # Where ε comes from (calibration.py): "data" (the rule on true keyposes) or
        # "predictions" (the same rule on a relative head's own predicted offsets over
        # `calibration_batches` training batches). None: predictions for a relative
        # head, data otherwise.
        "epsilon_from": None,
        "calibration_batches": 8,
        # Inference default (methods/atomskill/policy.py): temporal ensembling of the
        # overlapping chunks of the current skill, weights exp(m * age) (ACT's m = 0.01);
        # None = off (each step executes the newest chunk's action; the paper).
        "ensemble_m": None,
    })
    c.loss_weights = ml_collections.ConfigDict({
        "vq": 1.0,
        "action": 1.0,  # β1
        "contrastive": 1e-2,  # β2
        "keypose": 1.0,
        "diffusion": 1.0,  # sampler stage
        "label_head": 1.0,  # sampler stage
    })
    c.sampler = ml_collections.ConfigDict({
        "num_train_timesteps": 100,
        "beta_schedule": "cosine",  # "cosine" | "linear"
        "beta_start": 1e-4,  # linear schedule only; given for T=1000, scaled by 1000/T
        "beta_end": 0.02,
        "ddim_steps": 10,
        "ddim_eta": 0.0,  # 0: deterministic DDIM
        # "sample": the UNet predicts the clean tokens x0; "epsilon": the noise (see diffusion.py)
        "prediction_type": "sample",
        # Pooled features carry the steps since the skill began (0 when sampling); see
        # diffusion.py. Clipped at max_skill_step.
        "condition_on_skill_step": True,
        "max_skill_step": 64,
        # Inference default (methods/atomskill/policy.py): re-sample the current skill
        # every this many steps; 0 = hold it until the keypose trigger (the paper).
        "resample_every": 0,
        # DDIM's x0 estimate is clipped to ±this (targets are standardised code vectors):
        # at the first step ᾱ_t ~ 1e-7, and an unclipped estimate (x - √(1-ᾱ)ε)/√ᾱ blows up.
        "clip_x0": 4.0,
        "unet_channel_mults": (1, 2),  # UNet widths = d_model * mult; one halving per extra level
        "unet_kernel": 3,
        "cond_dim": 256,  # FiLM conditioning vector width
        "label_dropout": 0.1,  # labels replaced by the null label during training (for CFG)
        "guidance_scale": 1.0,  # classifier-free guidance; 1.0 = off
        "label_source": "predicted",  # "predicted" (label head) | "none" (unconditional)
        "label_head_hidden": 256,
    })
    return c


def tiny_model_config() -> ml_collections.ConfigDict:
    """A very small model for tests and shape checks (d_model 32, one layer per stack,
    one 32x32 camera through a one-stage ResNet, 4 skill tokens, H=8, L=16, a one-level
    UNet). Few distinct shapes, so eager tests compile few kernels."""
    c = default_model_config()
    c.d_model, c.num_heads, c.mlp_dim, c.dropout = 32, 2, 64, 0.0  # dropout: faster compiles
    c.action_dim, c.proprio_dim, c.state_dim = 4, 6, 5
    c.cameras, c.image_size = ("front",), (32, 32)
    c.horizon, c.skill_length = 8, 16
    c.observation.update(resnet_width=8, resnet_stage_sizes=(1,), low_dim_hidden=32)
    c.skill_encoder.update(num_tokens=4, num_layers=1, conv_kernel=3)
    c.vq.update(codebook_size=8, recent_buffer_size=64)
    c.decoder.update(fusion_layers=1, action_layers=1)
    c.sampler.update(num_train_timesteps=10, ddim_steps=3, cond_dim=32, label_head_hidden=32,
                     unet_channel_mults=(1,))
    return c
