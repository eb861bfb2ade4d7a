"""`atomskill export` and its loader: a self-contained policy directory that loads with jax
and numpy alone, acts as the in-process policy does, and refuses damaged or foreign
artefacts naming the file. (Export parity for every registered method: the method
contract test, tests/test_method_contract.py.)"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.tiny_model import REPO, child_env

B = 2


def _infos():
    from atomskill_jax.policies.base import TaskInfo

    return [TaskInfo("pick-place", "pick", 1_000_000 + i, 0, i) for i in range(B)]


def _observations(steps=5):
    r = np.random.default_rng(7)
    return [{"state": (0.3 * r.normal(size=(B, 39))).astype(np.float32),
             "proprio": (0.1 * r.normal(size=(B, 4))).astype(np.float32),
             "language_embedding": r.normal(size=(B, 384)).astype(np.float32)}
            for _ in range(steps)]


OPTIONS = {"max_skill_steps": 2, "ensemble_m": 0.1}  # skills end every 2 steps; blending


@pytest.fixture(scope="module")
def exported(tiny_trained_workdir, exported_policy_dir):
    """(policy directory, the in-process policy's actions on _observations())."""
    from atomskill_jax.policies.loading import load_policy

    out = exported_policy_dir
    policy = load_policy(tiny_trained_workdir, **OPTIONS)
    policy.reset(_infos())
    actions = np.stack([policy.infer(o) for o in _observations()])
    assert policy.skill_counts()["skills"].tolist() == [3, 3]  # steps 0, 2, 4
    return out, actions


def test_the_directory_holds_what_the_manifest_says(exported):
    from atomskill_jax.export import safetensors_io

    out, _ = exported
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["format"] == "atomskill-policy" and manifest["format_version"] == 1
    assert manifest["platforms"] == ["cpu", "cuda"]
    assert manifest["method"] == "atomskill" and manifest["jax_version"]
    assert set(manifest["functions"]) == {"decode", "sample_decode"}
    assert set(manifest["files"]) == {
        "params.safetensors", "runtime.json", "statistics.json", "calibration.json",
        "config.json", "functions/decode.jaxexport", "functions/sample_decode.jaxexport"}
    decode = manifest["functions"]["decode"]
    assert decode["platforms"] == ["cpu", "cuda"]
    # The batch dimension is symbolic in every input and output.
    obs_spec, lang_spec, tokens_spec = decode["inputs"]
    assert lang_spec["__array__"] == {"shape": [384], "dtype": "float32"}
    assert [o["shape"][0] for o in decode["outputs"]] == ["b", "b"]
    assert manifest["observation"]["state"] == {"shape": [39], "dtype": "float32"}
    assert manifest["action"] == {"dim": 4, "space": "action", "chunk_length": 4}
    # Parameters are a file, not constants of the functions: the functions are small.
    params, meta = safetensors_io.load(os.path.join(out, "params.safetensors"))
    assert meta == {"method": "atomskill"}
    assert sum(p.size for p in params.values()) == manifest["params"]["count"] > 30_000
    assert os.path.getsize(os.path.join(out, "functions/decode.jaxexport")) < \
        os.path.getsize(os.path.join(out, "params.safetensors"))


def test_exported_actions_match_in_process_including_chaining(exported):
    from atomskill_jax.export import loader

    out, want = exported
    policy = loader.load_policy(out, **OPTIONS)
    policy.reset(_infos())
    got = np.stack([policy.infer(o) for o in _observations()])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert policy.skill_counts()["skills"].tolist() == [3, 3]
    assert np.abs(want[1:] - want[:-1]).max() > 1e-3  # the actions move: not a constant


BLOCKED = ("flax", "tensorflow", "orbax", "optax", "torch", "ml_collections", "chex",
           "tensorflow_datasets")

LOADER_ONLY = """
import importlib.abc, json, sys
BLOCKED = set(json.loads(sys.argv[3]))
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked in this test: {name}")
sys.meta_path.insert(0, Refuse())
import numpy as np
from atomskill_jax.export import loader
from atomskill_jax.policies.base import TaskInfo
policy = loader.load_policy(sys.argv[1], **json.loads(sys.argv[4]))
data = np.load(sys.argv[2])
policy.reset([TaskInfo("pick-place", "pick", 1_000_000 + i, 0, i) for i in range(2)])
steps = len([k for k in data.files if k.startswith("state")])
out = [policy.infer({"state": data[f"state{t}"], "proprio": data[f"proprio{t}"],
                     "language_embedding": data[f"lang{t}"]}) for t in range(steps)]
np.save(sys.argv[2] + ".actions.npy", np.stack(out))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"blocked_modules_loaded": loaded}))
"""


def test_the_loader_needs_only_jax_and_numpy(exported, tmp_path):
    out, want = exported
    obs = _observations()
    inputs = str(tmp_path / "obs.npz")
    np.savez(inputs, **{f"{k}{t}": o[key] for t, o in enumerate(obs)
                        for k, key in (("state", "state"), ("proprio", "proprio"),
                                       ("lang", "language_embedding"))})
    env = child_env()
    env["PYTHONPATH"] = REPO
    result = subprocess.run([sys.executable, "-c", LOADER_ONLY, out, inputs, json.dumps(BLOCKED),
                             json.dumps(OPTIONS)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"blocked_modules_loaded": []}
    np.testing.assert_allclose(np.load(inputs + ".actions.npy"), want, rtol=1e-5, atol=1e-5)


def _copy(exported, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(exported[0], dst)
    return dst


def test_a_damaged_file_is_refused_naming_it(exported, tmp_path):
    from atomskill_jax.export import loader

    out = _copy(exported, tmp_path)
    path = os.path.join(out, "params.safetensors")
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(loader.ExportError, match=r"params\.safetensors: checksum mismatch"):
        loader.load_policy(out)


def test_a_missing_file_is_refused_naming_it(exported, tmp_path):
    from atomskill_jax.export import loader

    out = _copy(exported, tmp_path)
    os.remove(os.path.join(out, "functions", "sample_decode.jaxexport"))
    with pytest.raises(loader.ExportError, match=r"sample_decode\.jaxexport: missing"):
        loader.load_policy(out)
    with pytest.raises(loader.ExportError, match="no such policy directory"):
        loader.load_policy(str(tmp_path / "nowhere"))


def test_an_artefact_too_old_for_this_jax_is_refused_naming_the_file(exported, tmp_path):
    import jax

    from atomskill_jax.export import loader

    out = _copy(exported, tmp_path)
    path = os.path.join(out, "manifest.json")
    manifest = json.load(open(path))
    old = jax.export.minimum_supported_calling_convention_version - 1
    manifest["functions"]["decode"]["calling_convention_version"] = old
    manifest["jax_version"] = "0.4.1"
    json.dump(manifest, open(path, "w"))
    with pytest.raises(loader.ExportError,
                       match=rf"decode\.jaxexport: exported with jax 0\.4\.1 in calling "
                             rf"convention {old}.*Export the policy again"):
        loader.load_policy(out)
    manifest["format_version"] = 99
    json.dump(manifest, open(path, "w"))
    with pytest.raises(loader.ExportError, match="format version 99"):
        loader.load_policy(out)


def test_options_compiled_into_the_functions_cannot_change_at_load(exported):
    from atomskill_jax.export import loader

    with pytest.raises(ValueError, match=r"\['num_steps'\] are compiled into the model"):
        loader.load_policy(exported[0], num_steps=3)
    with pytest.raises(ValueError, match=r"unknown runtime options \['temperature'\]"):
        loader.load_policy(exported[0], temperature=1.0)


def test_safetensors_files_agree_with_the_reference_implementation(tmp_path):
    import safetensors.numpy

    from atomskill_jax.export import safetensors_io

    r = np.random.default_rng(0)
    tensors = {"a/kernel": r.normal(size=(3, 5)).astype(np.float32),
               "count": np.asarray(7, np.int32), "flags": np.array([True, False]),
               "codes": r.integers(0, 255, (2, 2, 2)).astype(np.uint8),
               "half": r.normal(size=4).astype(np.float16), "wide": np.arange(3, dtype=np.int64)}
    ours = str(tmp_path / "ours.safetensors")
    safetensors_io.save(ours, tensors, metadata={"k": "v"})
    theirs = safetensors.numpy.load_file(ours)
    assert set(theirs) == set(tensors)
    for name, value in tensors.items():
        assert theirs[name].dtype == value.dtype and theirs[name].shape == value.shape, name
        np.testing.assert_array_equal(theirs[name], value)
    ref = str(tmp_path / "ref.safetensors")
    safetensors.numpy.save_file(tensors, ref, metadata={"k": "v"})
    loaded, meta = safetensors_io.load(ref)
    assert meta == {"k": "v"} and set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert loaded[name].shape == value.shape and loaded[name].dtype == value.dtype, name
        np.testing.assert_array_equal(loaded[name], value)
    truncated = str(tmp_path / "cut.safetensors")
    open(truncated, "wb").write(open(ref, "rb").read()[:-5])
    with pytest.raises(safetensors_io.SafetensorsError, match="cut.safetensors: tensor"):
        safetensors_io.load(truncated)
