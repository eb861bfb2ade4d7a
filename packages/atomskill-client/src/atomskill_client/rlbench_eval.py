"""Evaluate a served policy on RLBench tasks: success rate over episodes.

    python -m atomskill_client.rlbench_eval --uri ws://HOST:8000 \
        --tasks reach_target,push_button --episodes 25 --max-steps 100 --out sr.json

RLBench needs CoppeliaSim 4.1 and PyRep (Python 3.8 era), so it is imported only when
an environment is launched; the conversions and the episode loop work without it.
Observations follow the RLDS keys the server's metadata lists:

- `proprio` float32[8]: gripper pose (xyz, quaternion xyzw, as PyRep's get_pose) and
  gripper_open;
- `state` float32[S]: task_low_dim_state;
- `image_<camera>` uint8[H, W, 3]: `<camera>_rgb` (front, wrist, overhead,
  left_shoulder, right_shoulder), rendered at the metadata's size;
- `language_instruction`: the episode's first task description.

Actions are absolute end-effector targets [8] (xyz, quaternion xyzw, gripper open),
executed with `EndEffectorPoseViaPlanning` + `Discrete` gripper; the simulator waits
for inference, so no broker is needed. An episode succeeds when `task.step` says
terminate with reward 1 (terminate alone also fires on a task's fail conditions); a
target the planner cannot reach ends the episode as a failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

log = logging.getLogger("atomskill_client")

CAMERAS = ("front", "wrist", "overhead", "left_shoulder", "right_shoulder")
ACTION_DIM = 8  # xyz, quaternion xyzw, gripper open (EndEffectorPoseViaPlanning + Discrete)

_RLBENCH_MISSING = (
    "atomskill_client.rlbench_eval needs RLBench, which needs CoppeliaSim 4.1 and PyRep: "
    "install CoppeliaSim, set COPPELIASIM_ROOT, then `pip install "
    "git+https://github.com/stepjam/PyRep.git git+https://github.com/stepjam/RLBench.git` "
    "(see RLBench's README). The rest of atomskill_client works without it")


def _import_rlbench():
    """The RLBench names this module uses, imported on first use."""
    try:
        from rlbench.action_modes.action_mode import MoveArmThenGripper
        from rlbench.action_modes.arm_action_modes import EndEffectorPoseViaPlanning
        from rlbench.action_modes.gripper_action_modes import Discrete
        from rlbench.environment import Environment
        from rlbench.observation_config import CameraConfig, ObservationConfig
        from rlbench.utils import name_to_task_class
    except ImportError as exc:  # rlbench itself, or pyrep / CoppeliaSim underneath
        raise ImportError(f"{_RLBENCH_MISSING} ({exc})") from exc
    return dict(MoveArmThenGripper=MoveArmThenGripper,
                EndEffectorPoseViaPlanning=EndEffectorPoseViaPlanning, Discrete=Discrete,
                Environment=Environment, CameraConfig=CameraConfig,
                ObservationConfig=ObservationConfig, name_to_task_class=name_to_task_class)


def _entry_shape(spec: Mapping[str, Mapping], key: str) -> List[int]:
    return list(spec[key].get("shape", []))


def observation_from_rlbench(obs: Any, spec: Mapping[str, Mapping],
                             instruction: str = "") -> Dict[str, Any]:
    """The observation dict the server's metadata (`spec` = metadata["observation"])
    asks for, from an RLBench `Observation`; names the key and the fix on a mismatch."""
    out: Dict[str, Any] = {}
    for key in spec:
        if key == "proprio":
            pose, gripper = getattr(obs, "gripper_pose", None), getattr(obs, "gripper_open", None)
            if pose is None or gripper is None:
                raise ValueError("proprio: the RLBench observation has no gripper_pose or "
                                 "gripper_open; enable both in the ObservationConfig")
            pose = np.asarray(pose, np.float32).reshape(-1)
            if pose.shape != (7,):
                raise ValueError(f"proprio: gripper_pose has {pose.size} numbers, expected 7 "
                                 f"(xyz, quaternion xyzw)")
            value = np.concatenate([pose, np.asarray([gripper], np.float32)])
        elif key == "state":
            low_dim = getattr(obs, "task_low_dim_state", None)
            if low_dim is None:
                raise ValueError("state: the RLBench observation has no task_low_dim_state; "
                                 "create the environment with "
                                 "ObservationConfig(task_low_dim_state=True)")
            value = np.asarray(low_dim, np.float32).reshape(-1)
        elif key.startswith("image_"):
            camera = key[len("image_"):]
            rgb = getattr(obs, f"{camera}_rgb", None)
            if rgb is None:
                raise ValueError(f"{key}: the RLBench observation has no {camera}_rgb; enable "
                                 f"that camera's rgb in the ObservationConfig (cameras: "
                                 f"{', '.join(CAMERAS)})")
            value = np.asarray(rgb)
            if value.dtype != np.uint8:
                raise ValueError(f"{key}: {camera}_rgb has dtype {value.dtype}, expected uint8")
        elif key == "language_instruction":
            out[key] = str(instruction)
            continue
        else:
            raise ValueError(f"{key}: the server asks for an observation this RLBench client "
                             f"cannot build (it builds proprio, state, image_<camera>, "
                             f"language_instruction)")
        expected = _entry_shape(spec, key)
        if list(value.shape) != expected:
            fix = (f"render the camera at image_size=(W, H)=({expected[1]}, {expected[0]})"
                   if key.startswith("image_") and len(expected) == 3
                   else "the policy was trained on another observation layout")
            raise ValueError(f"{key}: shape {list(value.shape)} from RLBench, the server "
                             f"expects {expected}: {fix}")
        out[key] = value
    return out


def rlbench_action(action: Sequence[float]) -> np.ndarray:
    """An absolute end-effector target [8] for EndEffectorPoseViaPlanning + Discrete:
    xyz, the quaternion (xyzw) normalised (the planner refuses a non-unit one), and
    the gripper as 1.0 (open) or 0.0 (closed)."""
    action = np.asarray(action, np.float64).reshape(-1)
    if action.shape != (ACTION_DIM,):
        raise ValueError(f"action has {action.size} numbers; RLBench's end-effector pose mode "
                         f"takes {ACTION_DIM} (xyz, quaternion xyzw, gripper open)")
    norm = np.linalg.norm(action[3:7])
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError(f"action quaternion {action[3:7].tolist()} cannot be normalised")
    gripper = 1.0 if action[7] > 0.5 else 0.0
    return np.concatenate([action[:3], action[3:7] / norm, [gripper]])


@dataclasses.dataclass
class EpisodeResult:
    task: str
    episode: int
    seed: int
    success: bool
    steps: int
    error: Optional[str] = None  # why it ended early (a target the planner refused)


def run_episode(client, task_env, *, task: str, episode: int, seed: int, max_steps: int,
                variation: int = 0) -> EpisodeResult:
    """One episode of `task_env` (an RLBench TaskEnvironment) driven by `client`."""
    np.random.seed(seed)  # RLBench places objects with numpy's global generator
    descriptions, obs = task_env.reset()
    instruction = descriptions[0] if descriptions else ""
    client.reset(task=task, instruction=instruction, layout=variation, seed=seed,
                 episode=episode)
    spec = client.metadata["observation"]
    steps = 0
    while steps < max_steps:
        reply = client.infer(observation_from_rlbench(obs, spec, instruction),
                             timestamp=time.time())
        for action in reply["actions"]:
            try:
                target = rlbench_action(action)
            except ValueError as exc:  # the policy's fault, not the evaluation's
                return EpisodeResult(task, episode, seed, False, steps + 1,
                                     f"bad action {np.round(action, 4).tolist()}: {exc}")
            try:
                obs, reward, terminate = task_env.step(target)
            except Exception as exc:  # InvalidActionError, pyrep's IKError / path errors
                if type(exc).__name__ not in ("InvalidActionError", "IKError",
                                              "ConfigurationPathError"):
                    raise
                return EpisodeResult(task, episode, seed, False, steps + 1,
                                     f"{type(exc).__name__}: {exc}")
            steps += 1
            if terminate:
                return EpisodeResult(task, episode, seed, bool(reward >= 1.0), steps)
            if steps >= max_steps:
                break
    return EpisodeResult(task, episode, seed, False, steps, f"no success in {max_steps} steps")


def evaluate(client, task_envs: Mapping[str, Any], *, episodes: int, max_steps: int,
             seed: int = 0, variation: int = 0) -> Dict[str, Any]:
    """SR per task and overall over `episodes` episodes of every task; episode e of a
    task uses seed `seed + e`. Prints one line per episode."""
    results: List[EpisodeResult] = []
    per_task: Dict[str, float] = {}
    for name, task_env in task_envs.items():
        if hasattr(task_env, "set_variation"):
            task_env.set_variation(variation)
        wins = 0
        for episode in range(episodes):
            result = run_episode(client, task_env, task=name, episode=episode,
                                 seed=seed + episode, max_steps=max_steps, variation=variation)
            results.append(result)
            wins += result.success
            note = f" ({result.error})" if result.error and not result.success else ""
            print(f"{name} episode {episode + 1}/{episodes}: "
                  f"{'success' if result.success else 'failure'} after {result.steps} steps"
                  f"{note}; SR so far {wins}/{episode + 1}", flush=True)
        per_task[name] = wins / episodes if episodes else float("nan")
    overall = float(np.mean(list(per_task.values()))) if per_task else float("nan")
    return {"success_rate": overall, "per_task": per_task,
            "episodes": [dataclasses.asdict(r) for r in results],
            "server": {k: client.metadata.get(k) for k in
                       ("method", "policy", "params_sha256", "statistics_sha256")}}


def launch_rlbench(metadata: Mapping[str, Any], *, headless: bool = True):
    """A launched RLBench Environment whose observations carry what `metadata` asks
    for (cameras at its image sizes, task_low_dim_state when it wants `state`)."""
    rl = _import_rlbench()
    if int(metadata["action"]["dim"]) != ACTION_DIM:
        raise ValueError(f"the server's policy predicts {metadata['action']['dim']} numbers "
                         f"per action; RLBench's end-effector pose mode takes {ACTION_DIM}")
    spec = metadata["observation"]
    cameras = {}
    for camera in CAMERAS:
        key = f"image_{camera}"
        config = rl["CameraConfig"]()
        config.set_all(False)
        if key in spec:
            height, width = _entry_shape(spec, key)[:2]
            config.rgb, config.image_size = True, (width, height)
        cameras[f"{camera}_camera"] = config
    obs_config = rl["ObservationConfig"](**cameras)
    obs_config.set_all_low_dim(False)
    obs_config.gripper_pose = obs_config.gripper_open = True
    obs_config.task_low_dim_state = "state" in spec
    action_mode = rl["MoveArmThenGripper"](arm_action_mode=rl["EndEffectorPoseViaPlanning"](),
                                           gripper_action_mode=rl["Discrete"]())
    env = rl["Environment"](action_mode, obs_config=obs_config, headless=headless)
    env.launch()
    return env, rl["name_to_task_class"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from atomskill_client.client import PolicyClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default="ws://127.0.0.1:8000")
    parser.add_argument("--token", default=None)
    parser.add_argument("--tasks", required=True, help="comma-separated RLBench task files, "
                                                       "e.g. reach_target,push_button")
    parser.add_argument("--episodes", type=int, default=25)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variation", type=int, default=0)
    parser.add_argument("--show", action="store_true", help="open CoppeliaSim's window")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with PolicyClient(args.uri, token=args.token) as client:
        env, task_class = launch_rlbench(client.metadata, headless=not args.show)
        try:
            names = [t.strip() for t in args.tasks.split(",") if t.strip()]
            task_envs = {name: env.get_task(task_class(name)) for name in names}
            report = evaluate(client, task_envs, episodes=args.episodes,
                              max_steps=args.max_steps, seed=args.seed,
                              variation=args.variation)
        finally:
            env.shutdown()
    for name, rate in report["per_task"].items():
        print(f"{name}: SR {100 * rate:.1f}%")
    print(f"mean SR over {len(report['per_task'])} tasks: {100 * report['success_rate']:.1f}%")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
