"""USR (seed paper "Unifying What and How", secs 4.1-4.3) on the method contract
(methods/spec.py).

Stages:
  pretrain  Stage I: E_task, E_trans, E_act, the shared NSVQ codebook and D_act
            (`stage1/`), the pathways alternating on `model.alternate`; unused codes
            replaced every `train.replace_unused_every` steps (hook "replace_unused")
  adapt     Stage II: the prior and the Gaussian policy (`stage2/`) on the frozen
            Stage I encoder, which it takes from the pretrain stage's final checkpoint
            (or `train.init_from`: one pre-training, many adaptations)
Policy: methods/usr/policy.py (history, prior argmax code, Gaussian mean chunk).
"""

from __future__ import annotations

from flax import nnx

from atomskill_jax.methods.spec import Hook, MethodSpec, Stage
from atomskill_jax.methods.usr import data

STAGE1, STAGE2 = "stage1", "stage2"


def create(config, rngs: nnx.Rngs):
    from atomskill_jax.methods.usr.model import USR

    return USR(config.model, rngs=rngs)


def _replace_unused(model, rng) -> dict:
    return model.replace_unused(rng)


def stages(config) -> tuple[Stage, ...]:
    train = config.train
    ema_stages = tuple(train.get("ema_stages", ()))
    every = int(train.get("replace_unused_every", 0))
    hooks = (Hook("replace_unused", every, _replace_unused),) if every > 0 else ()
    # CLIP (`clip/`) is in neither filter: no stage trains it.
    pretrain = Stage("pretrain", nnx.PathContains(STAGE1), ema="pretrain" in ema_stages,
                     hooks=hooks)
    adapt = Stage("adapt", nnx.PathContains(STAGE2), starts_from="pretrain",
                  carried=nnx.Not(nnx.PathContains(STAGE2)), ema="adapt" in ema_stages)
    return (pretrain, adapt)


def compute_loss(model, rng, batch, *, stage: str, step, train: bool):
    return model.compute_loss(rng, batch, stage=stage, step=step, train=train)


def make_policy(model, assets: dict, options: dict):
    from atomskill_jax.methods.usr.policy import policy_from_assets

    return policy_from_assets(model, assets, options)


def make_program(model, assets: dict, options: dict):
    from atomskill_jax.methods.usr.policy import make_program as program

    return program(model, assets, options)


def resolve_options(config, options: dict) -> dict:
    from atomskill_jax.methods.usr.runtime import parse_options, resolve_ensemble_m

    opts = parse_options(options)
    return {"requery_every": int(opts.requery_every),
            "ensemble_m": resolve_ensemble_m(opts.ensemble_m, config.model.get("ensemble_m"))}


SPEC = MethodSpec(name="usr", create=create, stages=stages, fake_batch=data.fake_batch,
                  input_spec=data.input_spec, trajectory_transform=data.trajectory_transform,
                  compute_loss=compute_loss, make_policy=make_policy,
                  make_program=make_program, normalizer_keys=data.normalizer_keys,
                  resolve_options=resolve_options)

__all__ = ["SPEC"]
