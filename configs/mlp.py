"""MLP baseline configs: `get_config(variant)` with variant cpu | cpu_images | tiny.

  atomskill train --config=configs/mlp.py:cpu --workdir=/tmp/mlp \
      --config.data.data_dir=/tmp/rlb6          # rlbench6 built by `atomskill build-data`
  atomskill eval --workdir=/tmp/mlp --suite=rlbench6 --episodes=20 --seeds=0,1,2

The floor of issue 4: proprio + the 39-d MetaWorld state + the instruction embedding
-> an MLP -> a 16-step chunk of native delta actions, re-planned every step by the
generic chunk runtime (methods/mlp/, policies/chunk_policy.py). Same data, statistics, normalisation and
evaluation as configs/atomskill.py; only the model differs.
cpu:  3 x 512 hidden (~0.8M parameters), L1 (as ACT and AtomSkill), batch 256; 2 minutes
      on 2 cores.
cpu_images: cpu's MLP on configs/atomskill.py:cpu_images's inputs (two 64 px cameras
      through a small ResNet each, proprio, no state), batch 64.
tiny: a few steps on the test fixture (tests/).
"""

from __future__ import annotations

import ml_collections

from configs import atomskill

VARIANTS = ("cpu", "cpu_images", "tiny")


def _mlp_model(config, hidden, loss="l1"):
    m = config.model
    m.decoder.skill_conditioning = False
    m.decoder.predict_keypose = False
    m.dropout = 0.0
    m.decoder.ensemble_m = None  # the floor re-plans every step, no ensembling
    m.observation.joint_low_dim_hidden = ()  # the transformer's encoder; unused here
    m.mlp = ml_collections.ConfigDict({"hidden": tuple(hidden), "loss": loss})
    config.method = "mlp"
    config.stage = "skill"
    return config


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    variant = (variant or "cpu").strip()
    if variant not in VARIANTS:
        raise ValueError(f"configs/mlp.py: unknown variant {variant!r}; expected one of "
                         f"{', '.join(VARIANTS)}")
    config = atomskill.get_config(variant)  # the same data pipeline and optimiser knobs
    if variant == "tiny":
        config = _mlp_model(config, (32, 32))
    else:
        config = _mlp_model(config, (512, 512, 512))
        config.data.batch_size = 256
        config.optim.lr, config.optim.warmup_steps = 1e-3, 200
        config.train.update(skill_steps=10000, checkpoint_every=2000, log_every=200)
    if variant == "cpu_images":
        # configs/atomskill.py:cpu_images's data and image encoder (corner + gripperPOV at
        # 64 px, proprio, no state; ResNet width 8, one block per stage), each camera's
        # 2x2x64 feature map flattened into the MLP's input (methods/mlp/image_features.py).
        # Batch 64, not the state floor's 256: the encoder's cost is per example (fake
        # batch, 2 loaded cores: 133 ms a step at 64, 690 ms at 256), so 10000 steps are
        # the state floor's number of updates on a quarter of its examples.
        config.data.batch_size = 64
    config.variant = variant
    return config
