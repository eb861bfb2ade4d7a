"""The thin client package (packages/atomskill-client) in a real Python 3.8.

Simulator stacks such as RLBench stay on Python 3.8, so the client's own unit tests
run in `.venv38` (CPython 3.8, the package installed editable with its test extra).
`make test` builds that venv first (target `.venv38/.installed`); without it this
test builds it the same way (pip, from PyPI). A missing 3.8 interpreter fails the
test: set ATOMSKILL_PY38 or `pyenv install 3.8.18`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "packages" / "atomskill-client"
VENV = ROOT / ".venv38"
MARKER = VENV / ".installed"  # the Makefile's target: newer than pyproject.toml when current
HEAVY = ("jax", "flax", "tensorflow", "torch", "atomskill_jax")
IMPORT_CHECK = (
    "import sys, atomskill_client, atomskill_client.broker, atomskill_client.rlbench_eval\n"
    f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
    "assert not heavy, 'importing atomskill_client imported %s' % heavy\n"
    "print(atomskill_client.__file__)\n")


def _python38() -> pathlib.Path:
    """ATOMSKILL_PY38, else CPython 3.8.18 under pyenv's root."""
    override = os.environ.get("ATOMSKILL_PY38")
    if override:
        candidates = [override]
    else:
        roots = []
        try:
            roots.append(subprocess.run(["pyenv", "root"], capture_output=True, text=True,
                                        timeout=30).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass  # pyenv not on PATH: its usual root below
        roots += [os.environ.get("PYENV_ROOT", ""), str(pathlib.Path.home() / ".pyenv")]
        candidates = [f"{root}/versions/3.8.18/bin/python" for root in roots if root]
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return pathlib.Path(candidate)
    pytest.fail(f"no Python 3.8 interpreter for the client package's tests: looked at "
                f"{candidates}. Install it with `pyenv install 3.8.18`, or point "
                f"ATOMSKILL_PY38 at a CPython 3.8 executable.", pytrace=False)


def _clean_env() -> dict:
    """This process's environment without what would leak into the 3.8 interpreter
    (this venv's paths, pytest's options and worker variables)."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    return {k: v for k, v in os.environ.items()
            if k not in drop and not k.startswith("PYTEST_")}


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          env=kwargs.pop("env", _clean_env()), **kwargs)


def _current() -> bool:
    return (MARKER.exists() and (VENV / "bin" / "python").exists()
            and MARKER.stat().st_mtime >= (PACKAGE / "pyproject.toml").stat().st_mtime)


def _build(python38: pathlib.Path) -> None:
    """What the Makefile's `.venv38/.installed` target does."""
    print(f"building {VENV} with {python38} (pip install -e packages/atomskill-client[test])")
    for step in ([python38, "-m", "venv", "--clear", VENV],
                 [VENV / "bin" / "python", "-m", "pip", "install", "-q", "-e",
                  f"{PACKAGE}[test]"]):
        done = _run(step, timeout=600)
        if done.returncode:
            pytest.fail(f"building {VENV} failed at `{' '.join(map(str, step))}`:\n"
                        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}", pytrace=False)
    (VENV / ".gitignore").write_text("*\n")  # keep the venv out of `git status`
    MARKER.touch()


@pytest.fixture(scope="module")
def python38() -> pathlib.Path:
    """The venv's interpreter, built once (under a lock: another run may be building)."""
    interpreter = _python38()
    lock_name = hashlib.sha1(str(VENV).encode()).hexdigest()[:12]
    with open(os.path.join(tempfile.gettempdir(), f"atomskill-venv38-{lock_name}.lock"),
              "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _current():
            _build(interpreter)
    return VENV / "bin" / "python"


def test_the_venv_runs_python_3_8(python38):
    done = _run([python38, "-c", "import sys; assert sys.version_info[:2] == (3, 8), "
                                 "sys.version; print(sys.version)"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3.8.")


def test_importing_the_client_pulls_in_no_ml_framework(python38):
    # In the 3.8 venv, from this checkout (editable install) ...
    done = _run([python38, "-c", IMPORT_CHECK])
    assert done.returncode == 0, done.stderr
    assert pathlib.Path(done.stdout.strip()).is_relative_to(PACKAGE / "src")
    # ... and here, where jax, flax and tensorflow are installed and would be found.
    env = dict(_clean_env(), PYTHONPATH=str(PACKAGE / "src"))
    done = _run([sys.executable, "-c", IMPORT_CHECK], env=env)
    assert done.returncode == 0, done.stderr


def test_the_package_unit_tests_pass_in_python_3_8(python38):
    done = _run([python38, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                cwd=PACKAGE, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"the client package's tests failed in Python 3.8:\n{output}"
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) >= 60, output  # the whole suite was collected
    assert not re.search(r"\d+ (skipped|xfailed)", output), output


DRIVE_SERVER = r"""
import json, sys
import numpy as np
from atomskill_client import ActionBroker, PolicyClient, Unauthorized
assert sys.version_info[:2] == (3, 8), sys.version
url, inputs, out = sys.argv[1], sys.argv[2], sys.argv[3]
data = np.load(inputs)
steps = len([k for k in data.files if k.startswith("state")])
obs = [{"state": data["state%d" % t], "proprio": data["proprio%d" % t],
        "language_embedding": data["lang%d" % t]} for t in range(steps)]
result = {}
with PolicyClient(url, token="tok") as client:
    result["metadata"] = {k: client.metadata[k] for k in ("protocol", "method", "chunk_length")}
    client.reset(task="pick-place", instruction="pick", layout=1000000, seed=0, episode=0)
    result["actions"] = [client.infer(o)["actions"][0].tolist() for o in obs]
try:
    PolicyClient(url, token="wrong", retries=0)
except Unauthorized as err:
    result["unauthorized"] = str(err)
with PolicyClient(url, token="tok") as client:
    it = iter(obs * 4)
    broker = ActionBroker(client, lambda: next(it), control_hz=50.0, prefetch_steps=2)
    broker.reset(task="pick-place", instruction="pick", layout=1000000, seed=0, episode=0)
    played = [broker.step().tolist() for _ in range(12)]
    stats = broker.stats
    broker.close()
    result["broker"] = {"played": len(played), "underruns": stats.underruns,
                        "requests": stats.requests}
json.dump(result, open(out, "w"))
"""


def test_the_python38_client_drives_the_real_server(python38, exported_policy_dir, tmp_path):
    """The 3.8 client against `atomskill serve` (this process, the project's venv, an
    exported policy): metadata, the in-process actions,
    a refused token, and the broker playing at 50 Hz."""
    import json

    import numpy as np

    from atomskill_jax.serving import policy_source
    from atomskill_jax.serving.server import PolicyServer, ServerThread
    from tests import serving_helpers as sh

    steps = 6
    episode = sh.episode(300, steps)
    want = sh.reference_actions(exported_policy_dir, [episode])[0]
    inputs = tmp_path / "obs.npz"
    np.savez(inputs, **{f"{k}{t}": o[key] for t, o in enumerate(episode)
                        for k, key in (("state", "state"), ("proprio", "proprio"),
                                       ("lang", "language_embedding"))})
    served = policy_source.from_exported(exported_policy_dir)
    with ServerThread(PolicyServer(served, port=0, max_batch=2, token="tok")) as url:
        done = _run([python38, "-c", DRIVE_SERVER, url, inputs, tmp_path / "out.json"],
                    timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.load(open(tmp_path / "out.json"))
    assert result["metadata"] == {"protocol": 1, "method": "atomskill", "chunk_length": 4}
    np.testing.assert_allclose(np.asarray(result["actions"]), want, rtol=1e-5, atol=1e-5)
    assert "unauthorized" in result["unauthorized"]
    assert result["broker"]["played"] == 12 and result["broker"]["requests"] >= 6
