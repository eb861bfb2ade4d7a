"""Closed-loop evaluation in real MetaWorld, in spawned worker processes."""

import functools
import os

import numpy as np
import pytest

from atomskill_jax.envs import metaworld as mw
from atomskill_jax.eval import evaluate, load_report, write_report
from atomskill_jax.policies.base import Policy, PolicySpec, RandomPolicy
from atomskill_jax.policies.scripted import ScriptedExpertPolicy

TASKS = ["drawer-close", "pick-place"]


@pytest.mark.slow
def test_expert_succeeds_and_random_fails_in_worker_processes(tmp_path):
    expert = evaluate(functools.partial(ScriptedExpertPolicy, "action"), TASKS,
                      episodes_per_task=2, seeds=(0, 1), num_workers=2, progress=False,
                      checkpoint_step=7, command="pytest expert")
    assert [r.task for r in expert.results] == ["drawer-close"] * 4 + ["pick-place"] * 4
    assert {r.layout for r in expert.results if r.seed == 1} == {1_000_002, 1_000_003}
    summary = expert.summary()
    assert summary["groups"]["average"]["sr"].mean >= 0.75
    assert summary["groups"]["average"]["atp"].mean >= summary["groups"]["average"]["sr"].mean
    for r in expert.results:
        assert r.num_stages == (2 if r.task == "drawer-close" else 3)
        if r.success:  # the stage predicates follow the expert all the way
            assert r.stages_reached == r.num_stages and r.steps == r.success_step + 1
    assert expert.meta["policy"]["action_space"] == "action"
    assert expert.meta["checkpoint_step"] == 7 and expert.meta["versions"]["metaworld"] == "3.1.1"

    random = evaluate(functools.partial(RandomPolicy, 0), TASKS, episodes_per_task=2,
                      seeds=(0,), num_workers=2, max_steps=150, progress=False)
    rsum = random.summary()["groups"]["average"]
    assert rsum["sr"].mean == 0.0 and rsum["atp"].mean < 0.5
    assert all(r.steps == 150 for r in random.results)
    write_report(expert, str(tmp_path / "expert"))
    assert load_report(str(tmp_path / "expert")).results == expert.results


@pytest.mark.slow
def test_absolute_target_policy_in_process_and_chunks():
    # the expert re-expressed as absolute targets, converted back by the adapter
    report = evaluate(functools.partial(ScriptedExpertPolicy, "action_abs"), ["drawer-close"],
                      episodes_per_task=2, seeds=(0,), num_workers=0, progress=False)
    assert all(r.success for r in report.results)
    ChunkedExpert.calls = 0
    chunked = evaluate(functools.partial(ChunkedExpert, 4), ["drawer-close"],
                       episodes_per_task=2, seeds=(0,), num_workers=0, progress=False,
                       batch_size=2)
    assert all(r.success for r in chunked.results)
    # one call per 2 executed steps of the longest episode (both run in lockstep)
    assert ChunkedExpert.calls == -(-max(r.steps for r in chunked.results) // 2)


class ChunkedExpert(Policy):
    """The expert's action repeated into an H-step chunk, executed open loop in halves."""

    calls = 0  # class-level: the policy lives inside evaluate()

    def __init__(self, horizon: int):
        self.inner = ScriptedExpertPolicy()
        self.horizon = horizon
        self.spec = PolicySpec(name="chunked", execute_steps=horizon // 2)

    def reset(self, task_info):
        self.inner.reset(task_info)

    def infer(self, observation):
        ChunkedExpert.calls += 1
        return np.repeat(self.inner.infer(observation)[:, None], self.horizon, axis=1)


class ImagePolicy(Policy):
    """Checks the camera observation it gets, then acts like the expert."""

    def __init__(self):
        self.inner = ScriptedExpertPolicy()
        self.spec = PolicySpec(name="image", observation_keys=("state", "image_corner"),
                               image_size=(32, 32))

    def reset(self, task_info):
        self.inner.reset(task_info)

    def infer(self, observation):
        images = observation["image_corner"]
        assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8
        assert images.std() > 0  # a rendered scene, not a blank frame
        return self.inner.infer(observation)


@pytest.mark.slow
def test_images_and_videos_render_in_the_worker(tmp_path):
    import ctypes.util

    if mw.render_backend() == "osmesa" and ctypes.util.find_library("OSMesa") is None:
        pytest.skip("no OSMesa for offscreen rendering (Debian: libosmesa6)")
    # OSMesa renders a MetaWorld frame in ~0.16 s here whatever its size: few steps.
    report = evaluate(ImagePolicy, ["drawer-close"], episodes_per_task=1, seeds=(0,),
                      num_workers=1, progress=False, videos_per_task=1, max_steps=12,
                      video_dir=str(tmp_path / "videos"))
    (result,) = report.results
    assert result.steps == 12 and result.video.endswith((".mp4", ".gif"))
    assert os.path.getsize(result.video) > 0 and "drawer-close_seed0_ep0" in result.video


class BatchRecorder(RandomPolicy):
    """Random actions; records every batch size and reset it is given."""

    seen: list = []

    def reset(self, task_info):
        BatchRecorder.seen.append(("reset", len(task_info)))
        super().reset(task_info)

    def infer(self, observation):
        BatchRecorder.seen.append(("infer", len(observation["state"])))
        return super().infer(observation)


def test_short_jobs_are_padded_to_one_batch_size():
    BatchRecorder.seen = []
    report = evaluate(BatchRecorder, ["reach"], episodes_per_task=3, seeds=(0,),
                      num_workers=0, batch_size=2, max_steps=4, progress=False)
    assert [r.episode for r in report.results] == [0, 1, 2]
    assert all(r.steps == 4 for r in report.results)
    assert {size for _, size in BatchRecorder.seen} == {2}
    assert [kind for kind, _ in BatchRecorder.seen].count("reset") == 2
