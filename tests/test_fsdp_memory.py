"""FSDP really splits the train state: on 8 fake devices (tests/conftest.py) with
fsdp=8, a small AtomSkill config keeps about 1/8 of its parameter and optimiser bytes
per device, its largest arrays are split along 'fsdp', and nothing sizeable is left
replicated; CLIP's kernels and embeddings are split too. The figures come from the
trainer's own sharding path (bench/fsdp_memory.py: create_train_state's abstract
state, no allocation)."""

import jax
import pytest
from flax import nnx

from atomskill_jax.training import config_flags, mesh as mesh_lib
from bench import fsdp_memory
from tests.tiny_model import REPO


@pytest.fixture(scope="module")
def measured():
    assert jax.device_count() == 8
    c = config_flags.load_config(f"{REPO}/configs/atomskill.py:tiny")
    with c.unlocked():
        # Widths divisible by 8, a camera (ResNet), a two-level UNet (a transposed
        # conv) and a recent-encodings buffer as large as a kernel: each kind of array
        # the paper model has.
        c.model.d_model, c.model.mlp_dim, c.model.observation.low_dim_hidden = 32, 64, 32
        c.model.sampler.cond_dim = c.model.sampler.label_head_hidden = 32
        c.model.sampler.unet_channel_mults = (1, 2)
        c.model.vq.recent_buffer_size = 256
        c.data.cameras, c.data.image_size = ("front",), (32, 32)
    fsdp_memory.fill_dims(c)
    return fsdp_memory.measure(c, "skill")


@pytest.mark.parametrize("part", ["params", "opt", "total"])
def test_fsdp8_keeps_about_an_eighth_per_device(measured, part):
    ratio = measured["fsdp8"][part] / measured["fsdp1"][part]
    assert ratio <= 0.15, f"{part}: fsdp=8 keeps {ratio:.3f} of the fsdp=1 bytes per device"


def test_nothing_sizeable_is_replicated(measured):
    largest = measured["replicated"][0]
    # Only biases, norm scales and heads onto action dims are (512 bytes at most, 0.03%
    # of the parameters); the UNet's transposed conv alone would be 16 KiB (0.8%).
    assert largest["bytes"] <= 0.005 * measured["fsdp1"]["params"], largest


def test_largest_arrays_carry_fsdp():
    c = config_flags.load_config(f"{REPO}/configs/atomskill.py:tiny")
    with c.unlocked():
        c.model.d_model, c.model.mlp_dim = 32, 64
    fsdp_memory.fill_dims(c)
    abstract, _ = fsdp_memory.abstract_state(c, "skill", 8)
    leaves = [(jax.tree_util.keystr(p), x) for part in (abstract.params, abstract.frozen)
              for p, x in jax.tree_util.tree_leaves_with_path(part)]
    leaves.sort(key=lambda item: -item[1].size)
    for name, x in leaves[:10]:
        assert "fsdp" in tuple(x.sharding.spec), (name, x.shape, x.sharding.spec)


def test_clip_kernels_and_embeddings_carry_fsdp():
    from atomskill_jax.models.clip import CLIPModel, CLIPTowerConfig

    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=2, vocab_size=64, max_position_embeddings=8,
                 image_size=32, patch_size=16)
    model = nnx.eval_shape(lambda: CLIPModel(CLIPTowerConfig(**tower), CLIPTowerConfig(**tower),
                                             16, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    mesh = mesh_lib.make_mesh(data=1, fsdp=8)
    shardings = mesh_lib.state_shardings(state, mesh)
    shardings = dict(nnx.to_flat_state(shardings))
    found = 0
    for path, leaf in nnx.to_flat_state(state):
        if leaf.get_value().ndim >= 2:
            spec = shardings[path].get_value().spec
            assert "fsdp" in tuple(spec), (path, leaf.get_value().shape, spec)
            found += 1
    assert found >= 10
