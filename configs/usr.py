"""USR configs: `get_config(variant)` with variant paper | cpu | tiny.

  # one pre-training (Stage I) on the 45 ML45 training tasks ...
  atomskill build-data metaworld --suite=ml45_train --episodes-per-task=25 --out=/tmp/mw
  atomskill train --config=configs/usr.py:cpu --workdir=/tmp/usr_pre \
      --config.stage=pretrain --config.data.data_dir=/tmp/mw
  # ... and many adaptations (Stage II) on the 5 test tasks, each from that checkpoint,
  # normalised with the pre-training statistics so the frozen encoder sees the same scale
  atomskill build-data metaworld --suite=ml45_test --episodes-per-task=10 --out=/tmp/mw10
  atomskill train --config=configs/usr.py:cpu --workdir=/tmp/usr_10 --config.stage=adapt \
      --config.data.data_dir=/tmp/mw10 \
      --config.data.datasets='({"name": "metaworld_scripted/ml45_test", "weight": 1.0},)' \
      --config.train.init_from=/tmp/usr_pre/pretrain/checkpoints \
      --config.data.statistics_from=/tmp/usr_pre/pretrain/checkpoints
  # USR (No Skill): the same with --config.model.policy_condition=instruction

paper: what the issue states of the seed paper (CLIP ViT-B/16 patch tokens and CLIP text
       features; two pathways with one codebook, NSVQ, alternating optimisation; a
       Gaussian BAKU head). The sizes marked "ours" are not taken from the paper: this
       tree has no copy of it to check them against.
cpu:   MetaWorld 39-d state as tokens (rendering costs 0.1-0.2 s a frame here), small
       model; pretrain steps sized for ml45_train with 25 demos per task, adapt steps
       for ml45_test with 5-50 demos per task.
tiny:  tests (a few steps, fake batches).
"""

from __future__ import annotations

import ml_collections

from atomskill_jax.data.config import default_data_config
from atomskill_jax.methods.usr.config import default_model_config

VARIANTS = ("paper", "cpu", "tiny")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.stage = "both"  # "pretrain" (Stage I) | "adapt" (Stage II) | "both"
    c.method = "usr"  # methods/registry.py
    c.data = default_data_config()
    c.data.datasets = ({"name": "metaworld_scripted/ml45_train", "weight": 1.0},)
    # Adaptation runs: the pretrain checkpoints directory whose statistics normalise the
    # data, so the frozen encoder sees inputs scaled as in pre-training ("" = own).
    c.data.statistics_from = ""
    c.model = default_model_config()
    # One value, every use: the model's chunk length and cameras are the data's.
    c.model.horizon = c.data.get_ref("horizon")
    c.model.cameras = c.data.get_ref("cameras")
    c.model.image_size = c.data.get_ref("image_size")

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    c.distributed = ml_collections.ConfigDict({"initialize": False})
    c.optim = ml_collections.ConfigDict({
        "lr": 1e-4, "weight_decay": 1e-4, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
        "schedule": "cosine", "warmup_steps": 500, "min_lr_ratio": 0.1, "clip_norm": 1.0,
    })
    c.train = ml_collections.ConfigDict({
        "pretrain_steps": 50000, "adapt_steps": 20000,
        "ema_decay": 0.999, "ema_stages": (),
        "replace_unused_every": 100,  # pretrain: NSVQ codes used below threshold replaced
        "init_from": "",  # adapt: a pretrain checkpoints dir ("" -> W/pretrain/checkpoints)
        "log_every": 100, "checkpoint_every": 2000, "keep_checkpoints": 3,
        "async_checkpoints": True, "check_statistics_batches": 2, "progress": True,
    })
    c.wandb = ml_collections.ConfigDict({"enabled": False, "project": "atomskill", "name": ""})
    return c


def _metaworld_dims(m):
    m.action_dim, m.proprio_dim, m.state_dim, m.language_dim = 4, 4, 39, 384


def _paper(c):
    d, m = c.data, c.model
    _metaworld_dims(m)
    m.scene_encoder = "clip"  # paper: frozen CLIP ViT-B/16 patch tokens + CLIP text
    m.clip_dir = ""  # set: a local openai/clip-vit-base-patch16 directory
    d.cameras, d.image_size, d.use_state = ("corner",), (224, 224), False  # ours (MetaWorld)
    m.max_scene_tokens = 196  # 14 x 14 patches of ViT-B/16 at 224 px
    m.dim, m.num_heads, m.mlp_dim = 256, 8, 1024  # ours
    m.trans_layers = m.act_layers = m.decoder_layers = 4  # ours
    m.num_codes = 64  # ours
    d.horizon = 16  # ours (H)
    m.history = 10  # ours (L)
    m.stage2.update(dim=256, num_heads=8, mlp_dim=1024, prior_layers=4, policy_layers=4,
                    head_hidden=(256, 256))  # ours; BAKU's head widths
    d.batch_size, d.example_shuffle_buffer = 64, 500  # ours; decoded history frames
    return c


def _cpu(c):
    d, m = c.data, c.model
    _metaworld_dims(m)
    d.use_state, d.cameras = True, ()
    d.batch_size, d.horizon = 64, 16
    d.example_shuffle_buffer = 5000
    m.scene_encoder = "state"
    m.history = 4
    m.max_scene_tokens = 16
    m.dim, m.num_heads, m.mlp_dim = 64, 4, 128
    m.fusion_queries = 4
    m.trans_layers = m.act_layers = m.decoder_layers = 2
    m.num_codes = 32
    m.alternate = (1, 1)
    m.stage2.update(dim=64, num_heads=4, mlp_dim=128, prior_layers=2, policy_layers=2,
                    head_hidden=(256, 256))
    c.optim.lr, c.optim.warmup_steps = 1e-3, 100
    # ml45_train at 25 demos per task: ~1125 episodes x ~100-150 steps; ~5 epochs at
    # batch 64. ml45_test at 5-50 demos per task: 25-250 episodes.
    c.train.update(pretrain_steps=8000, adapt_steps=3000, replace_unused_every=100,
                   log_every=50, checkpoint_every=1000)
    return c


def _tiny(c):
    d, m = c.data, c.model
    _metaworld_dims(m)  # the MetaWorld test fixture's (language: 384-d MiniLM)
    d.use_state, d.cameras = True, ()
    d.batch_size, d.horizon = 8, 4
    d.episode_shuffle_buffer, d.example_shuffle_buffer = 4, 64
    d.num_parallel_calls, d.prefetch = 1, 1
    m.history = 3
    m.max_scene_tokens = 16
    m.dim, m.num_heads, m.mlp_dim = 16, 2, 32
    m.fusion_queries = 2
    m.trans_layers = m.act_layers = m.decoder_layers = 1
    m.num_codes = 8
    m.resnet.update(width=8, stage_sizes=(1,))
    m.stage2.update(dim=16, num_heads=2, mlp_dim=32, prior_layers=1, policy_layers=1,
                    head_hidden=(32,))
    c.optim.warmup_steps = 1
    c.train.update(pretrain_steps=4, adapt_steps=2, replace_unused_every=2, log_every=1,
                   checkpoint_every=2, keep_checkpoints=2, check_statistics_batches=1,
                   progress=False)
    return c


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    variant = (variant or "cpu").strip()
    builders = {"paper": _paper, "cpu": _cpu, "tiny": _tiny}
    if variant not in builders:
        raise ValueError(f"configs/usr.py: unknown variant {variant!r}; expected one of "
                         f"{', '.join(VARIANTS)}")
    config = builders[variant](base_config())
    config.variant = variant
    return config
