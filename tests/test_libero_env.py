"""The LIBERO entry point: says exactly what is missing, quickly, and never waits on stdin.

Every case runs in a child process with its own HOME, so the machine's ~/.libero never
matters, and a child that blocked on input would hit the timeout and fail the test.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from atomskill_jax.envs import libero
    if os.environ.get("SKIP_CHECK"):  # as if the check passed but libero still asked
        libero.require_libero = lambda **kwargs: None
    from atomskill_jax.policies.base import PolicySpec
    out = {}
    a = libero.check_libero_available(probe_timeout=30)
    out["ok"], out["missing"], out["message"] = a.ok, list(a.missing), a.message
    spec = PolicySpec(name="p", action_space="action_abs", action_dim=7,
                      observation_keys=("proprio", "state", "image_agentview",
                                        "language_instruction"), image_size=(8, 8))
    try:
        env = libero.LiberoEvalEnv("KITCHEN_SCENE3_turn_on_the_stove", spec)
    except libero.LiberoUnavailable as err:
        out["error"] = str(err)
    else:
        obs = env.reset(1)
        out["instruction"] = obs["language_instruction"]
        out["proprio"] = obs["proprio"].tolist()
        out["state_dim"] = len(obs["state"])
        out["top_row"] = obs["image_agentview"][0, :, 0].tolist()
        out["settle"] = [a.tolist() for a in env.env.env.actions]
        target = np.concatenate([obs["proprio"][:6] + [0.05, 0, -0.025, 0, 0, 0], [1.0]])
        obs, info, truncated = env.step(target)
        out["sent"] = env.env.env.actions[-1].tolist()
        out["success"], out["truncated"] = info["success"], truncated
        env.close()
    print("RESULT" + json.dumps(out))
""")

# A stand-in for LIBERO that behaves like the real one where it matters: its
# libero/libero/__init__.py asks on stdin when the config file is missing.
FAKE = {
    "libero/__init__.py": "",
    "libero/libero/__init__.py": """
        import os, sys
        _root = os.environ.get("LIBERO_CONFIG_PATH", os.path.expanduser("~/.libero"))
        if not os.path.exists(os.path.join(_root, "config.yaml")) or os.environ.get("FAKE_PROMPT"):
            sys.stderr.write("PROMPTED\\n")
            input("Do you want to specify a custom path for the dataset folder? (Y/N): ")
        def get_libero_path(key):
            return os.path.join(_root, key)
    """,
    "libero/libero/benchmark.py": """
        import types
        import numpy as np
        class _Bench:
            def get_task_names(self):
                return ["KITCHEN_SCENE3_turn_on_the_stove"]
            def get_task(self, i):
                return types.SimpleNamespace(name=self.get_task_names()[i],
                    language="turn on the stove", problem_folder="libero_90", bddl_file="s.bddl")
            def get_task_init_states(self, i):
                return [np.zeros(3), np.ones(3)]
        def get_benchmark_dict():
            return {s: _Bench for s in ("libero_spatial", "libero_object", "libero_goal",
                                        "libero_10", "libero_90")}
    """,
    "libero/libero/envs.py": """
        import numpy as np
        class OffScreenRenderEnv:
            def __init__(self, bddl_file_name, camera_heights, camera_widths):
                self.size = (camera_heights, camera_widths)
                self.actions = []
            def reset(self):
                self.actions = []
            def set_init_state(self, state):
                self.init = np.asarray(state)
                return self._obs()
            def step(self, action):
                self.actions.append(np.asarray(action))
                return self._obs(), 0.0, len(self.actions) >= 11, {}
            def _obs(self):
                img = np.zeros((*self.size, 3), np.uint8)
                img[-1, :, 0] = 255  # OpenGL: the picture's top row is stored last
                return {"robot0_eef_pos": np.array([0.1, 0.2, 0.3]) + self.init[0],
                        "robot0_eef_quat": np.array([1.0, 0.0, 0.0, 0.0]),
                        "robot0_gripper_qpos": np.array([0.04, -0.04]),
                        "robot0_joint_pos": np.arange(7.0), "agentview_image": img,
                        "robot0_eye_in_hand_image": img}
            def close(self):
                pass
    """,
}


def _run(tmp_path, env_extra=None, fake=False, stdin=subprocess.DEVNULL):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "LIBERO_CONFIG_PATH"}
    env.update(HOME=str(home), PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    if fake:
        root = tmp_path / "fake"
        for rel, text in FAKE.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(textwrap.dedent(text))
        for name in ("robosuite", "bddl", "torch", "mujoco"):  # only those not installed
            if importlib.util.find_spec(name) is None:
                (root / name).mkdir(exist_ok=True)
                (root / name / "__init__.py").write_text("")
        env["PYTHONPATH"] = f"{root}{os.pathsep}{REPO}"
    env.update(env_extra or {})
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:  # with stdin=PIPE the pipe stays open and silent: a prompt would block here
        out, err = proc.communicate(timeout=60) if stdin != subprocess.PIPE else (
            _wait_open_stdin(proc))
    finally:
        proc.kill()
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, err[-2000:]
    # (after a prompt's text, which has no newline)
    line = [ln for ln in out.splitlines() if "RESULT{" in ln][-1]
    return json.loads(line.split("RESULT", 1)[1]), err, elapsed


def _wait_open_stdin(proc):
    proc.wait(timeout=60)  # never writes to or closes the child's stdin
    return proc.stdout.read(), proc.stderr.read()


def _write_config(tmp_path, dirs=True):
    root = tmp_path / "libero_root"
    keys = ("benchmark_root", "bddl_files", "init_states", "datasets", "assets")
    for key in keys:
        if dirs:
            (root / key).mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "home" / ".libero"
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "config.yaml").write_text("".join(f"{k}: {root / k}\n" for k in keys))
    return cfg / "config.yaml"


def test_without_libero_names_what_is_missing_quickly(tmp_path):
    if importlib.util.find_spec("libero") is not None:
        pytest.skip("libero is installed here")
    result, err, elapsed = _run(tmp_path)
    assert not result["ok"] and elapsed < 30
    config = str(tmp_path / "home" / ".libero" / "config.yaml")
    assert any("'libero' not found" in m and "Lifelong-Robot-Learning/LIBERO" in m
               for m in result["missing"])
    assert any(m.startswith(f"{config} does not exist") for m in result["missing"])
    assert result["error"] == result["message"] and "unavailable" in result["error"]


def test_never_imports_a_prompting_libero_without_its_config(tmp_path):
    # Packages present, config absent, stdin an open pipe that never gets data.
    result, err, _ = _run(tmp_path, fake=True, stdin=subprocess.PIPE)
    assert "PROMPTED" not in err
    assert len(result["missing"]) == 1 and "config.yaml does not exist" in result["missing"][0]
    assert "error" in result


def test_bad_config_is_named_and_a_prompt_in_the_probe_cannot_block(tmp_path):
    path = _write_config(tmp_path, dirs=False)
    result, _, _ = _run(tmp_path, fake=True, stdin=subprocess.PIPE)
    assert {m.split(" = ")[0] for m in result["missing"]} == {
        f"{path}: bddl_files", f"{path}: init_states", f"{path}: assets"}
    _write_config(tmp_path)
    result, _, elapsed = _run(tmp_path, {"FAKE_PROMPT": "1"}, fake=True, stdin=subprocess.PIPE)
    assert len(result["missing"]) == 1 and elapsed < 30
    assert "`import libero` failed in a subprocess: EOFError" in result["missing"][0]
    # The adapter's own import cannot wait on input either.
    result, err, elapsed = _run(tmp_path, {"FAKE_PROMPT": "1", "SKIP_CHECK": "1"}, fake=True,
                                stdin=subprocess.PIPE)
    assert "PROMPTED" in err and elapsed < 30
    assert result["error"].startswith("importing libero asked for input")


def test_with_libero_available_the_adapter_runs(tmp_path):
    _write_config(tmp_path)
    result, _, _ = _run(tmp_path, fake=True)
    assert result["ok"] and result["missing"] == [] and "error" not in result
    assert result["instruction"] == "turn on the stove" and result["state_dim"] == 15
    # Layout 1 is init state ones(3): the fake puts it into the ee position.
    assert result["proprio"][:3] == pytest.approx([1.1, 1.2, 1.3])
    assert result["proprio"][3:6] == pytest.approx([3.14159265, 0, 0], abs=1e-6)
    assert result["proprio"][6:] == pytest.approx([0.04, -0.04])
    assert result["top_row"] == [255] * 8  # flipped: the top row is on top
    assert len(result["settle"]) == 10 and all(a[6] == -1 for a in result["settle"])
    # action_abs -> the OSC delta: +0.05 m is a full step, -0.025 m half of one.
    assert result["sent"] == pytest.approx([1, 0, -0.5, 0, 0, 0, 1], abs=1e-5)
    assert result["success"] == 1.0 and not result["truncated"]
