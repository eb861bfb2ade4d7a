"""USR model defaults (`config.model` of configs/usr.py); every key is read only inside
methods/usr/.

Stage I (pre-training, cross-modal VQ-VAE with one shared codebook):
  scene_encoder     "state" (MetaWorld state parts as tokens) | "resnet" (from scratch on
                    `cameras`) | "clip" (frozen CLIP ViT patch tokens from `clip_dir`)
  dim               width of the fused tokens, E_trans, E_act, D_act and the codes
  fusion_queries    instruction queries of the temperature-scaled cross-attention (eq. 2)
  num_codes         codebook size K; NSVQ usage window / replacement threshold
  alternate         (n_vl, n_act): steps of the visuo-linguistic pathway, then of the
                    action pathway, repeated (see model.py for what each step trains)
Stage II (adaptation on the frozen Stage I encoder):
  stage2.*          the prior p_ψ and policy π_θ transformers, the Gaussian head
  alpha             eq. 5: L = L_policy + alpha * CE(prior, code of the frozen encoder)
  policy_condition  "skill" (USR) | "instruction" (USR (No Skill): no prior at all)
History: `history` frames O[t-L+1..t] (the current one last) feed Stage II.
"""

from __future__ import annotations

import ml_collections

SCENE_ENCODERS = ("state", "resnet", "clip")
POLICY_CONDITIONS = ("skill", "instruction")


def default_model_config() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    # Dimensions of the data (set from the dataset by configs/usr.py variants).
    m.action_dim = 4
    m.proprio_dim = 4
    m.state_dim = 39
    m.language_dim = 384
    m.horizon = 16  # H; configs tie it to data.horizon
    m.history = 4  # L
    m.cameras = ()  # configs tie it to data.cameras
    m.image_size = (128, 128)
    m.dtype = "float32"
    m.dropout = 0.0

    m.scene_encoder = "state"
    m.use_proprio = True  # "state": proprio as one more token
    m.resnet = ml_collections.ConfigDict({"width": 64, "stage_sizes": (2, 2, 2, 2)})
    m.clip_dir = ""  # a local HF CLIP directory (config.json + model.safetensors)
    m.max_scene_tokens = 256

    m.dim = 128
    m.num_heads = 4
    m.mlp_dim = 256
    m.fusion_queries = 4
    m.init_temperature = 0.07
    m.trans_layers = 2
    m.act_layers = 2
    m.decoder_layers = 2
    m.num_codes = 64
    m.usage_window = 100
    m.replace_threshold = 0.01
    m.alternate = (1, 1)
    m.recon_loss = "l1"  # "l1" | "mse"

    m.stage2 = ml_collections.ConfigDict({
        "dim": 128, "num_heads": 4, "mlp_dim": 256, "prior_layers": 2, "policy_layers": 2,
        "head_hidden": (256, 256),
        "std": None,  # None: learned log-std; a number: fixed isotropic std
    })
    m.alpha = 1.0
    m.policy_condition = "skill"
    m.ensemble_m = None  # temporal ensembling at inference (ACT's m); None: off
    return m
