"""Policies of randomly initialised models for the latency benches (latency does not
depend on parameter values): a config's model with unit statistics as its assets."""

from __future__ import annotations

import ml_collections
import numpy as np

from atomskill_jax.data.normalization import FieldStatistics
from atomskill_jax.methods import registry
from atomskill_jax.training.train_state import build_model


def unit_assets(config, datasets=("metaworld_scripted",)) -> dict:
    """Assets of a checkpoint whose statistics are mean 0, std 1 for every field."""
    m = config.model

    def stats(n):
        z = np.zeros(int(n), np.float32)
        return FieldStatistics(z, z + 1, z - 1, z + 1, z - 1, z + 1).to_json()

    fields = {"action": stats(m.action_dim), "action_abs": stats(m.action_dim),
              "observation/proprio": stats(m.proprio_dim)}
    if int(m.get("state_dim", 0) or 0):
        fields["observation/state"] = stats(m.state_dim)
    return {"config": config.to_dict(), "datasets": list(datasets),
            "statistics": [{"fields": fields, "num_episodes": 1, "num_steps": 1,
                            "fingerprint": "random"}],
            "calibration": {"epsilon": -1.0, "max_skill_steps": 10**9}}  # never switch


def random_program(config: ml_collections.ConfigDict, options: dict | None = None):
    """(program, model) of the config's method with random parameters."""
    model = build_model(config, 0)
    spec = registry.get_spec(config)
    return spec.make_program(model, unit_assets(config), dict(options or {})), model
