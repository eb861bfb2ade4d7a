"""The method contract: what the trainer, the loader, evaluation, export and serving know
about a method, and nothing more.

Each `methods/<name>/__init__.py` exposes `SPEC`, a `MethodSpec`; `methods/registry.py`
maps names to them. Everything else about a method (its config keys, its model, its
policy runtime) stays inside its package.

    spec = registry.get_spec(config)
    model = spec.create(config, nnx.Rngs(seed))
    for stage in spec.stages(config): ...            # the trainer's loop
    loss, metrics = spec.compute_loss(model, rng, batch, stage="skill", step=s, train=True)
    policy = spec.make_policy(model, assets, options)  # assets: the checkpoint's item
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

Filter = Any  # an nnx filter (nnx.Param, nnx.All(...), a path predicate, ...)


@dataclasses.dataclass(frozen=True)
class Hook:
    """Called every `every` steps of a stage, after the step: `fn(model, rng) -> metrics`
    may update the model's variables in place (e.g. re-seeding dead codes). `rng` is the
    stage's base key folded with the step and 0x5EED, so a resumed run draws the same."""

    name: str  # metrics are logged as "<name>/<key>"
    every: int
    fn: Callable[[Any, Any], Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage: its checkpoints live in W/<name>/.

    trainable    the nnx filter of the Params this stage optimises (the others are
                 passed through frozen, without optimiser state)
    starts_from  a stage whose final checkpoint initialises the variables that
                 `carried` selects (None: fresh initialisation); `config.train.init_from`
                 may point at another workdir's checkpoints of that stage instead
    carried      the filter of variables taken from `starts_from` (others start fresh)
    ema          keep an EMA of the trained parameters (saved as the inference params)
    hooks        periodic hooks (see Hook)
    """

    name: str
    trainable: Filter
    starts_from: str | None = None
    carried: Filter = None
    ema: bool = False
    hooks: tuple[Hook, ...] = ()


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """See the module docstring. All callables take the resolved run config (the whole
    ConfigDict: `config.model`, `config.data`, `config.train`, ...)."""

    name: str
    # (config, nnx.Rngs) -> nnx.Module
    create: Callable[[Any, Any], Any]
    # config -> every stage of the method, in training order
    stages: Callable[[Any], Sequence[Stage]]
    # (config, batch_size) -> a numpy batch with the pipeline's structure
    fake_batch: Callable[[Any, int], dict]
    # config -> {observation key: (shape without batch, dtype name)}: what `infer` reads
    input_spec: Callable[[Any], dict]
    # config -> a per-episode tf function (episode, dataset_index) -> per-step examples
    # stacked along T (the pipeline unbatches them), or None for the library's default
    # (data/traj_transforms.training_steps: chunks, segments, keyposes)
    trajectory_transform: Callable[[Any], Callable | None]
    # (model, rng, batch, *, stage, step, train) -> (loss, metrics)
    compute_loss: Callable[..., tuple[Any, dict]]
    # (model, assets, options: dict) -> policies.base.Policy; `assets` is the checkpoint's
    # assets item (config, statistics, datasets, calibration)
    make_policy: Callable[[Any, dict, dict], Any]
    # (model, assets, options) -> policies.program.Program: the policy as pure batched
    # model functions + a numpy runtime (what `atomskill export` writes and the server
    # batches); None: the method cannot be exported
    make_program: Callable[[Any, dict, dict], Any] | None = None
    # (config, pipeline, model) -> JSON-able dict saved as assets["calibration"] with the
    # final checkpoint (None: nothing to calibrate)
    calibrate: Callable[[Any, Any, Any], dict] | None = None
    # action_space -> {batch path: statistics field} the normaliser applies (None: the
    # library's default, data/normalization.normalizer_keys)
    normalizer_keys: Callable[[str], dict] | None = None
    # (config, options) -> the runtime options the policy will really use (defaults
    # resolved from the config): recorded with evaluation reports
    resolve_options: Callable[[Any, dict], dict] | None = None

    def stage(self, config, name: str) -> Stage:
        for s in self.stages(config):
            if s.name == name:
                return s
        raise ValueError(f"method {self.name!r} has no stage {name!r} with this config "
                         f"(stages: {self.stage_names(config)})")

    def stage_names(self, config) -> list[str]:
        return [s.name for s in self.stages(config)]


def low_dim_input_spec(config) -> dict:
    """{key: (shape, dtype)} of proprio, the instruction embedding and (when the model
    reads it) the state, from the resolved model config: the low-dimensional inputs
    the AtomSkill and MLP policies read."""
    m = config.model
    spec = {"proprio": ((int(m.proprio_dim),), "float32"),
            "language_embedding": ((int(m.language_dim),), "float32")}
    if int(m.state_dim) > 0:
        spec["state"] = ((int(m.state_dim),), "float32")
    return spec


def observation_input_spec(config) -> dict:
    """The low-dimensional inputs, then each of `model.cameras` as image_<camera>: uint8
    at the data's image size (the inputs of the AtomSkill and MLP policies)."""
    spec = low_dim_input_spec(config)
    for cam in tuple(config.model.cameras):
        spec[f"image_{cam}"] = ((*tuple(config.data.image_size), 3), "uint8")
    return spec
