"""The paper's ablations as one sweep: contrastive terms (Table 4), keypose (Table 5),
skill conditioning off (an ACT-like baseline), each over `seeds` seeds.

  atomskill sweep --config=configs/atomskill.py:cpu --sweep=configs/sweeps/ablations.py \
      --workdir=/tmp/ablations [--print-commands]
"""

from __future__ import annotations

ABLATIONS = {
    "full": {},
    "no_contrastive": {"model.contrastive.temporal": False, "model.contrastive.semantic": False},
    "no_temporal": {"model.contrastive.temporal": False},
    "no_semantic": {"model.contrastive.semantic": False},
    "no_keypose": {"model.decoder.predict_keypose": False},
    "act_baseline": {"model.decoder.skill_conditioning": False},
}


def get_sweep(arg: str = "") -> list[dict]:
    """One override dict per run; `arg` "seeds=N" runs every ablation with N seeds."""
    seeds = 1
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        if key != "seeds":
            raise ValueError(f"configs/sweeps/ablations.py: unknown argument {part!r}")
        seeds = int(value)
    # A training seed sets the data order too: runs that differ only in the init would
    # understate the seed-to-seed spread.
    return [{"name": f"{name}_seed{seed}", "seed": seed, "data.seed": seed, **overrides}
            for name, overrides in ABLATIONS.items() for seed in range(seeds)]
