"""The MLP floor on the method contract (methods/spec.py): one stage, named 'skill' so
its workdir layout (W/skill/checkpoints) is the one every earlier run has; the policy
is the generic chunk runtime (policies/chunk_policy.py), re-planning every step."""

from __future__ import annotations

import ml_collections
from flax import nnx

from atomskill_jax.methods.mlp.model import MLPPolicy, trainable_filter
from atomskill_jax.methods.spec import MethodSpec, Stage, observation_input_spec


def create(config, rngs: nnx.Rngs) -> MLPPolicy:
    return MLPPolicy(config.model, rngs=rngs)


def stages(config) -> tuple[Stage, ...]:
    ema = "skill" in tuple(config.train.get("ema_stages", ()))
    return (Stage("skill", trainable_filter("skill"), ema=ema),)


def compute_loss(model, rng, batch, *, stage: str, step, train: bool):
    del step
    return model.compute_loss(rng, batch, train=train, stage=stage)


def fake_batch(config, batch_size: int) -> dict:
    # The MLP reads a subset of AtomSkill's example structure (the default transform).
    from atomskill_jax.methods.mlp.model import fake_batch as model_fake_batch

    return model_fake_batch(config.model, batch_size)


def input_spec(config) -> dict:
    return observation_input_spec(config)


def make_program(model, assets: dict, options: dict):
    from atomskill_jax.policies.chunk_policy import chunk_program

    config = ml_collections.ConfigDict(assets["config"])
    return chunk_program(
        model, assets, options, method="mlp", default_name="mlp",
        observation_keys=tuple(input_spec(config)),
        default_ensemble_m=config.model.decoder.get("ensemble_m"))


def make_policy(model, assets: dict, options: dict):
    from atomskill_jax.policies.in_process import policy_from_program

    return policy_from_program(make_program(model, assets, options))


def resolve_options(config, options: dict) -> dict:
    from atomskill_jax.policies.chunk_policy import ChunkOptions, resolve_ensemble_m

    ChunkOptions(**options)  # refuses unknown or bad options
    return {"ensemble_m": resolve_ensemble_m(options.get("ensemble_m"),
                                             config.model.decoder.get("ensemble_m"))}


SPEC = MethodSpec(name="mlp", create=create, stages=stages, fake_batch=fake_batch,
                  input_spec=input_spec, trajectory_transform=lambda config: None,
                  compute_loss=compute_loss, make_policy=make_policy,
                  make_program=make_program, resolve_options=resolve_options)
