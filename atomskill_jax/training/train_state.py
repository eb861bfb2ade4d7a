"""Train state and the jitted, sharded train step.

The model (built by the config's method spec, methods/registry.py) is split once into
a static graph and three states, chosen by the stage's filter (methods/spec.Stage):
  params   Params trained in this stage (e.g. AtomSkill's 'sampler' stage trains ρ only,
           so φ, the VQ codebook and ψ stay frozen: they are not differentiated and
           have no optimiser state)
  frozen   the other Params (passed through untouched)
  rest     non-Param variables (VQ usage counts): updated by the step, not optimised
`train_step(rng, state, batch) -> (state, metrics)` merges them, differentiates the
loss with respect to `params` only, applies AdamW, updates the EMA, and folds the
step into the rng so a resumed run draws the same noise as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.extend  # noqa: F401 - jax.extend.core.jaxpr_as_fun
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from atomskill_jax.methods import registry
from atomskill_jax.methods.spec import Stage
from atomskill_jax.training import mesh as mesh_lib


def resolve_stage(config, stage) -> Stage:
    """A `Stage` of the config's method, given as one or by name."""
    return stage if isinstance(stage, Stage) else registry.get_spec(config).stage(config, stage)


def build_model(config, seed: int):
    """The model, built without eager sharding: placement is decided here from the
    annotations and the mesh. Import the method (`registry.get_spec`) outside any jax
    trace first: a module imported during a trace would turn its module-level jnp
    constants into tracers that leak."""
    spec = registry.get_spec(config)
    with nnx.use_eager_sharding(False):
        return spec.create(config, nnx.Rngs(seed))


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates applied so far
    rng: jax.Array  # uint32[2] base key; each step folds its index in
    params: nnx.State
    frozen: nnx.State
    rest: nnx.State
    opt_state: Any
    ema: Any  # EMA of `params` (an nnx.State) or None


def split_model(model, stage: Stage):
    """(graphdef, trained Params, frozen Params, the rest) by the stage's filter."""
    return nnx.split(model, nnx.All(nnx.Param, stage.trainable), nnx.Param, ...)


def inference_params(state: TrainState, graphdef) -> nnx.State:
    """All model variables for inference, trained parameters replaced by their EMA."""
    params = state.ema if state.ema is not None else state.params
    return nnx.state(nnx.merge(graphdef, params, state.frozen, state.rest))


def state_shardings(abstract: TrainState, tx, mesh: Mesh) -> TrainState:
    replicated = mesh_lib.replicated(mesh)
    params = mesh_lib.state_shardings(abstract.params, mesh)
    opt = optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, params,
                                transform_non_params=lambda _: replicated)
    return TrainState(
        step=replicated, rng=replicated, params=params,
        frozen=mesh_lib.state_shardings(abstract.frozen, mesh),
        rest=mesh_lib.state_shardings(abstract.rest, mesh), opt_state=opt,
        ema=params if abstract.ema is not None else None)


def with_shardings(abstract, shardings):
    """ShapeDtypeStructs carrying the shardings: the restore target for orbax."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def create_train_state(config, stage, tx, mesh: Mesh, *, use_ema: bool | None = None,
                       init_params: nnx.State | None = None, abstract_only: bool = False):
    """(graphdef, sharded TrainState, its shardings). Created inside jit with output
    shardings, so large parameters are born sharded and never gathered on one device.
    `init_params` (a full model state, e.g. the skill stage's result) overrides the
    fresh initialisation. `abstract_only`: ShapeDtypeStructs carrying the shardings
    instead (the restore target when resuming: nothing is initialised). `stage`: a
    Stage or its name; `use_ema` None: the stage's own `ema`."""
    seed = int(config.seed)
    stage = resolve_stage(config, stage)  # imports the method now, outside the traces below
    use_ema = stage.ema if use_ema is None else use_ema

    graphdefs = []  # the model's structure, recorded by the trace (static, no arrays)

    def init(loaded):
        model = build_model(config, seed)
        if loaded is not None:
            nnx.update(model, loaded)
        graphdef, params, frozen, rest = split_model(model, stage)
        graphdefs.append(graphdef)
        state = TrainState(step=jnp.zeros((), jnp.int32),
                           rng=jax.random.fold_in(jax.random.PRNGKey(seed), 1),
                           params=params, frozen=frozen, rest=rest, opt_state=tx.init(params),
                           ema=params if use_ema else None)
        # Weak types (from Python-scalar initialisers) would differ from the step's
        # output types and make the second step compile again.
        return jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), state)

    if abstract_only:
        abstract = jax.eval_shape(init, init_params)
        shardings = state_shardings(abstract, tx, mesh)
        return graphdefs[0], with_shardings(abstract, shardings), shardings
    # The model's construction is traced once (it dominates start-up: ~1 s of Python per
    # build for even the tiny models): its jaxpr gives the shapes that decide the
    # shardings, and is then compiled with them. Tracing it again under jit would give
    # the same program, so the same values.
    closed, abstract = jax.make_jaxpr(init, return_shape=True)(init_params)
    shardings = state_shardings(abstract, tx, mesh)
    run = jax.extend.core.jaxpr_as_fun(closed)
    flat = jax.jit(lambda leaves: run(*leaves), out_shardings=jax.tree.leaves(shardings))(
        jax.tree.leaves(init_params))
    state = jax.tree.unflatten(jax.tree.structure(abstract), flat)
    return graphdefs[0], state, shardings


def make_train_step(graphdef, tx, config, stage, *, schedule: Callable, ema_decay: float):
    """The pure step of `stage` (a Stage or its name) of the config's method; jit it
    with `jit_train_step`. The loss is the spec's `compute_loss`, told the step."""
    spec = registry.get_spec(config)
    stage = resolve_stage(config, stage)

    def train_step(rng, state: TrainState, batch):
        rng = jax.random.fold_in(rng, state.step)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state.frozen, state.rest, copy=True)
            loss, metrics = spec.compute_loss(model, rng, batch, stage=stage.name,
                                              step=state.step, train=True)
            rest = split_model(model, stage)[3]
            return loss, (metrics, rest)

        (loss, (metrics, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema is not None:
            # Warm-up of the decay so early EMA values are not dominated by the init.
            step = state.step.astype(jnp.float32)
            decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
            ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                       param_norm=optax.tree.norm(params),
                       lr=jnp.asarray(schedule(state.step), jnp.float32))
        new_state = state.replace(step=state.step + 1, params=params, rest=rest,
                                  opt_state=opt_state, ema=ema)
        return new_state, metrics

    return train_step


HOOK_SALT = 0x5EED  # hooks draw from (base key, step, salt): never a train step's key


def make_hook(graphdef, config, stage, hook, shardings: TrainState, mesh: Mesh):
    """A jitted `(rng, state) -> (state, metrics)` running `hook.fn(model, key)` on the
    merged model and keeping every variable it updates (e.g. dead VQ codes replaced by
    recent encoder outputs). The key folds the step reached into the base key."""
    stage = resolve_stage(config, stage)

    def run(rng, state: TrainState):
        model = nnx.merge(graphdef, state.params, state.frozen, state.rest, copy=True)
        metrics = hook.fn(model, jax.random.fold_in(jax.random.fold_in(rng, state.step),
                                                     HOOK_SALT))
        _, params, frozen, rest = split_model(model, stage)
        return state.replace(params=params, frozen=frozen, rest=rest), dict(metrics)

    replicated = mesh_lib.replicated(mesh)
    return jax.jit(run, in_shardings=(replicated, shardings),
                   out_shardings=(shardings, replicated), donate_argnums=(1,))


def jit_train_step(step_fn, shardings: TrainState, mesh: Mesh):
    """jit with the state's shardings in and out, the batch split over the mesh, and
    the incoming state's buffers donated (the step overwrites them in place)."""
    from atomskill_jax.data import mesh_batches

    replicated = mesh_lib.replicated(mesh)
    batch = mesh_batches.batch_sharding(mesh)
    return jax.jit(step_fn, in_shardings=(replicated, shardings, batch),
                   out_shardings=(shardings, replicated), donate_argnums=(1,))


def host_batch(batch: dict) -> dict:
    """Make a pipeline batch JAX-ready on the host: the 64-bit segment uid hashed to
    31 bits (only equality matters), other 64-bit values narrowed to 32."""
    import numpy as np

    def fix(path, x):
        x = np.asarray(x)
        name = jax.tree_util.keystr(path)
        if "uid" in name and x.dtype == np.int64:
            return ((x ^ (x >> 31)) & 0x7FFFFFFF).astype(np.int32)
        if x.dtype == np.int64:
            return x.astype(np.int32)
        if x.dtype == np.float64:
            return x.astype(np.float32)
        return x

    return jax.tree_util.tree_map_with_path(fix, batch)
