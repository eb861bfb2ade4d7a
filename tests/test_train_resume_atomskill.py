"""Resume with the real tiny AtomSkill through both stages: a run SIGKILLed in the skill
stage (after a dead-code re-seed) and again in the sampler stage, resumed each time,
ends with every array of its checkpoints (parameters, VQ usage state, optimiser state,
the sampler's EMA, rng) equal to an uninterrupted run's. The skill stage reads the rng
(token corruption, re-seeding), the sampler stage too (diffusion noise, label dropout).

The uninterrupted run also records each dead-code re-seed inside the training loop,
which the last tests check: codes whose usage fell below the threshold are replaced by
recent encoder outputs and their usage restarts at 1/K; the rest stay."""

import json
import os

import numpy as np
import pytest

from tests.train_helpers import (DUMP_CODE, Child, assert_same_arrays, ckpt_dir,
                                 load_dump)

HANG = "ATOMSKILL_TEST_HANG_AFTER_STEP"
SKILL_STEPS, SAMPLER_STEPS, REINIT_EVERY, CODES = 4, 6, 2, 8
DEAD_FRACTION = 0.9

# argv: devices, dataset, workdir, then actions: "record:DIR" (save the state before
# and after each dead-code re-seed), "train", "dump:STAGE:STEP:OUT".
CHILD = DUMP_CODE + f"""
import numpy as np
from atomskill_jax.training import trainer, train_state as ts
dataset, workdir = sys.argv[2], sys.argv[3]

def flat(prefix, tree):
    return {{prefix + jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}}

def record_reinits(out):
    os.makedirs(out, exist_ok=True)
    original = ts.make_hook
    def make(*args, **kwargs):
        reinit = original(*args, **kwargs)
        def call(rng, state):
            before = jax.device_get(state)  # copied before the call donates the buffers
            state, metrics = reinit(rng, state)
            after = jax.device_get(state)
            np.savez(os.path.join(out, f'reinit_{{int(before.step)}}.npz'),
                     **flat('before.params', before.params), **flat('before.rest', before.rest),
                     **flat('after.params', after.params), **flat('after.rest', after.rest),
                     **flat('metrics', jax.device_get(metrics)))
            return state, metrics
        return call
    ts.make_hook = make

for action in sys.argv[4:]:
    if action.startswith('record:'):
        record_reinits(action.split(':', 1)[1])
    elif action.startswith('dump:'):
        dump(workdir, *action.split(':')[1:])
    else:
        config = tiny_train_config(dataset, skill_steps={SKILL_STEPS},
                                   sampler_steps={SAMPLER_STEPS}, checkpoint_every=2,
                                   keep_checkpoints=0, reinit_dead_codes_every={REINIT_EVERY})
        config.stage = 'both'
        # Fast usage decay and a high threshold: codes die (and are re-seeded) within 2 steps.
        config.model.vq.usage_decay = 0.5
        config.model.vq.dead_usage_fraction = {DEAD_FRACTION}
        config.model.decoder.skill_token_corruption = 0.5  # the skill loss reads the rng
        print(json.dumps(trainer.train(config, workdir)), flush=True)
"""
TIMEOUT = 600  # seconds for any one child phase (compiling on 2 busy cores)


def _steps(workdir, stage):
    path = ckpt_dir(workdir, stage)
    return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def _metrics(workdir, stage):
    with open(os.path.join(str(workdir), stage, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


class Straight:
    """The uninterrupted run, started at once in its own child (it runs beside the
    killed one); `wait()` for its results."""

    def __init__(self, dataset, base):
        self.base, self.workdir = base, base / "straight"
        self.dumps = {name: base / f"a_{name}.npz" for name in ("skill2", "skill", "sampler")}
        self.child = Child(CHILD, 1, dataset, self.workdir, f"record:{base / 'reinit'}",
                           "train", f"dump:skill:2:{self.dumps['skill2']}",
                           f"dump:skill:{SKILL_STEPS}:{self.dumps['skill']}",
                           f"dump:sampler:{SAMPLER_STEPS}:{self.dumps['sampler']}",
                           cache_dir=base / "cache")
        self.metrics = None

    def wait(self) -> "Straight":
        if self.metrics is None:
            self.child.finish(TIMEOUT)
            self.metrics = {s: _metrics(self.workdir, s) for s in ("skill", "sampler")}
        return self


@pytest.fixture(scope="module")
def straight(metaworld_rlds_dir, tmp_path_factory):
    run = Straight(metaworld_rlds_dir, tmp_path_factory.mktemp("resume_atomskill"))
    yield run
    run.child.kill()


@pytest.fixture(scope="module")
def killed(straight, metaworld_rlds_dir):
    """The same run SIGKILLed twice and resumed each time; what was seen at each kill."""
    base = straight.base
    workdir = base / "killed"
    dumps = {name: base / f"b_{name}.npz" for name in ("skill", "sampler")}
    seen = {"dumps": dumps}

    def start(*actions, hang=None):
        child = Child(CHILD, 1, metaworld_rlds_dir, workdir, *actions, cache_dir=base / "cache",
                      env={HANG: str(hang)} if hang else None)
        children.append(child)
        return child

    children = []
    try:
        # Killed in the skill stage after step 3: its step-2 checkpoint holds a re-seed.
        start("train", hang=3).wait_for_line("HANGING after step 3", TIMEOUT)
        children[-1].kill()
        seen["skill_kill"] = {s: _steps(workdir, s) for s in ("skill", "sampler")}
        seen["skill_kill_metrics"] = _metrics(workdir, "skill")
        # Resumed: finishes the skill stage, killed in the sampler stage after step 5.
        start("train", hang=5).wait_for_line("HANGING after step 5", TIMEOUT)
        children[-1].kill()
        seen["sampler_kill"] = {s: _steps(workdir, s) for s in ("skill", "sampler")}
        out = start("train", f"dump:skill:{SKILL_STEPS}:{dumps['skill']}",
                    f"dump:sampler:{SAMPLER_STEPS}:{dumps['sampler']}").finish(TIMEOUT)
        seen["resumed"] = json.loads(out.strip().splitlines()[-1])
    finally:
        for child in children:
            child.kill()
    seen["metrics"] = {s: _metrics(workdir, s) for s in ("skill", "sampler")}
    return seen


def test_interruptions_happened_where_intended(killed):
    seen = killed
    assert seen["skill_kill"] == {"skill": [2], "sampler": []}
    assert seen["sampler_kill"] == {"skill": [2, 4], "sampler": [2, 4]}
    assert seen["resumed"]["skill"]["step"] == SKILL_STEPS
    assert seen["resumed"]["sampler"]["step"] == SAMPLER_STEPS
    # The checkpoint the skill stage resumed from was written after a re-seed.
    at_2 = [m for m in seen["skill_kill_metrics"] if m["step"] == 2]
    assert at_2 and at_2[0]["reinit/codes_reinitialised"] > 0


def test_twice_killed_run_resumes_exactly(straight, killed):
    straight.wait()
    for stage in ("skill", "sampler"):
        expected, resumed = load_dump(straight.dumps[stage]), load_dump(killed["dumps"][stage])
        # The comparison covers the state a resume must restore.
        for part in ("rng", "opt_state", "params", "frozen", "rest"):
            assert any(k.startswith(f"train_state['{part}']") for k in expected), (stage, part)
        assert "train_state['rest']['vq']['usage']['value']" in expected
        assert "params['vq']['usage']['value']" in expected
        has_ema = any(k.startswith("train_state['ema']") for k in expected)
        assert has_ema == (stage == "sampler"), stage
        assert_same_arrays(expected, resumed, f"{stage} stage, straight vs resumed")


def test_resumed_log_continues(straight, killed):
    straight.wait()
    for stage, total in (("skill", SKILL_STEPS), ("sampler", SAMPLER_STEPS)):
        steps = [m["step"] for m in killed["metrics"][stage]]
        # Every step logged (log_every=1); the ones redone after a kill appear twice.
        assert set(steps) == set(range(1, total + 1)) and steps[-1] == total, (stage, steps)
        last = {m["step"]: m for m in killed["metrics"][stage]}
        expected = {m["step"]: m for m in straight.metrics[stage]}
        for step in range(1, total + 1):
            assert last[step]["loss"] == expected[step]["loss"], (stage, step)
            assert last[step]["lr"] == expected[step]["lr"], (stage, step)


def _reinit_record(straight, step):
    data = load_dump(straight.base / "reinit" / f"reinit_{step}.npz")

    def one(prefix, name):
        keys = [k for k in data if k.startswith(prefix) and "vq" in k and f"'{name}'" in k]
        assert len(keys) == 1, (prefix, name, keys)
        return data[keys[0]]

    return data, one


def test_dead_codes_reseeded_every_window_in_the_loop(straight):
    straight.wait()
    recorded = sorted(os.listdir(straight.base / "reinit"))
    assert recorded == [f"reinit_{s}.npz" for s in range(REINIT_EVERY, SKILL_STEPS + 1,
                                                         REINIT_EVERY)]
    logged = [m["step"] for m in straight.metrics["skill"] if "reinit/codes_reinitialised" in m]
    assert logged == [2, 4]
    assert not any("reinit/codes_reinitialised" in m for m in straight.metrics["sampler"])


@pytest.mark.parametrize("step", [2, 4])
def test_dead_codes_replaced_by_encoder_outputs(straight, step):
    straight.wait()
    data, one = _reinit_record(straight, step)
    usage = one("before.rest", "usage")
    dead = usage < DEAD_FRACTION / CODES
    assert 0 < dead.sum() < CODES, usage  # the test needs both kinds of code
    before, after = one("before.params", "codebook"), one("after.params", "codebook")
    recent = one("before.rest", "recent")[:int(one("before.rest", "num_recent"))]
    assert len(recent) > 0
    # Each dead code is now one of the recent encoder outputs (plus 1e-3 noise) ...
    nearest = np.abs(after[dead][:, None, :] - recent[None]).max(-1).min(-1)
    assert (nearest < 1e-2).all() and (np.abs(after[dead] - before[dead]).max(-1) > 1e-2).all()
    # ... restarting at the uniform share; live codes and their usage are untouched.
    np.testing.assert_array_equal(one("after.rest", "usage")[dead], np.float32(1.0 / CODES))
    np.testing.assert_array_equal(after[~dead], before[~dead])
    np.testing.assert_array_equal(one("after.rest", "usage")[~dead], usage[~dead])
    assert data["metrics['codes_reinitialised']"] == dead.sum()
    logged = {m["step"]: m for m in straight.metrics["skill"]}
    assert logged[step]["reinit/codes_reinitialised"] == dead.sum()


def test_training_continues_from_the_reseeded_codebook(straight):
    """The checkpoint of the re-seed's step holds the re-seeded codebook and usage."""
    straight.wait()
    _, one = _reinit_record(straight, 2)
    saved = load_dump(straight.dumps["skill2"])
    for key in ("params['vq']['codebook']['value']",
                "train_state['params']['vq']['codebook']['value']"):
        np.testing.assert_array_equal(saved[key], one("after.params", "codebook"), err_msg=key)
    for key in ("params['vq']['usage']['value']", "train_state['rest']['vq']['usage']['value']"):
        np.testing.assert_array_equal(saved[key], one("after.rest", "usage"), err_msg=key)
