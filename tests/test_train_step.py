"""The train step (atomskill_jax/training/train_state.py) on a probe model, against
formulas written out here: the EMA with its warm-up decay min(ema_decay, (1+t)/(10+t)),
the rng folded with the step, the learning rate reported, the stage's filter (frozen
parameters untouched) and non-Param state carried forward."""

import jax
import numpy as np
import optax
import pytest

from atomskill_jax.training import mesh as mesh_lib, optimizer, train_state as ts
from tests.train_helpers import probe_batch, probe_config

EMA_DECAY = 0.2  # below the warm-up value from step 2 on: both branches of the min
STEPS = 3
KEY = jax.random.PRNGKey(42)


def _flat(state):
    return {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(state)}


@pytest.fixture(scope="module")
def trajectory():
    """States and metrics of STEPS steps of stage 'sampler', with an EMA."""
    config = probe_config()
    optim = probe_config().model  # an empty ConfigDict to fill
    # No warmup: the first update moves the parameters, so the first EMA step shows.
    optim.update(lr=0.05, weight_decay=0.0, schedule="cosine", warmup_steps=0,
                 min_lr_ratio=0.5)
    tx, schedule = optimizer.make_optimizer(optim, 4)
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    graphdef, state, _ = ts.create_train_state(config, "sampler", tx, mesh, use_ema=True)
    step = jax.jit(ts.make_train_step(graphdef, tx, config, "sampler", schedule=schedule,
                                      ema_decay=EMA_DECAY))
    states, metrics = [jax.device_get(state)], []
    for t in range(STEPS):
        state, m = step(KEY, state, probe_batch(t))
        states.append(jax.device_get(state))
        metrics.append(jax.device_get(m))
    return states, metrics, schedule


def test_ema_warm_up_formula(trajectory):
    states, _, _ = trajectory
    ema = _flat(states[0].params)  # the EMA starts at the initial parameters
    for k, v in _flat(states[0].ema).items():
        np.testing.assert_array_equal(v, ema[k], err_msg=k)
    decays = []
    for t in range(STEPS):
        decay = np.float32(min(EMA_DECAY, (1.0 + t) / (10.0 + t)))
        decays.append(decay)
        params = _flat(states[t + 1].params)
        ema = {k: decay * ema[k] + (np.float32(1) - decay) * params[k] for k in ema}
        got = _flat(states[t + 1].ema)
        for k in ema:
            np.testing.assert_allclose(got[k], ema[k], rtol=1e-6, atol=1e-7,
                                       err_msg=f"step {t + 1} {k}")
            assert not np.allclose(got[k], params[k], rtol=1e-4), k  # really an average
    np.testing.assert_allclose(decays, [0.1, 2 / 11, EMA_DECAY], rtol=1e-6)


def test_loss_gets_the_rng_folded_with_the_step(trajectory):
    _, metrics, _ = trajectory
    for t, m in enumerate(metrics):
        expected = jax.random.uniform(jax.random.fold_in(KEY, t), ())
        assert m["rng_draw"] == expected, t
    assert len({float(m["rng_draw"]) for m in metrics}) == STEPS


def test_reported_learning_rate_and_step_count(trajectory):
    states, metrics, schedule = trajectory
    lrs = [float(m["lr"]) for m in metrics]
    np.testing.assert_allclose(lrs, [float(schedule(t)) for t in range(STEPS)], rtol=1e-6)
    np.testing.assert_allclose(lrs[0], 0.05, rtol=1e-6)
    assert lrs[0] > lrs[1] > lrs[2]
    assert [int(s.step) for s in states] == list(range(STEPS + 1))


def test_stage_filter_and_non_param_state(trajectory):
    states, metrics, _ = trajectory
    first, last = states[0], states[-1]
    assert all("sampler" in k for k in _flat(first.params))
    assert all("body" in k for k in _flat(first.frozen))
    for k, v in _flat(first.frozen).items():  # frozen: not differentiated, not decayed
        np.testing.assert_array_equal(_flat(last.frozen)[k], v, err_msg=k)
    moved = [k for k, v in _flat(first.params).items()
             if not np.array_equal(_flat(last.params)[k], v)]
    assert moved == list(_flat(first.params)), moved
    # The counter the loss increments is carried from step to step.
    assert [float(m["calls"]) for m in metrics] == [1.0, 2.0, 3.0]
    assert [float(np.asarray(list(_flat(s.rest).values())[0])) for s in states] == [0, 1, 2, 3]


def test_opt_state_counts_the_updates(trajectory):
    states, _, _ = trajectory
    counts = [int(x) for x in jax.tree.leaves(states[-1].opt_state)
              if np.asarray(x).dtype == np.int32 and np.asarray(x).ndim == 0]
    assert counts and set(counts) == {STEPS}
    assert optax.tree.norm(states[-1].opt_state) > 0
