"""Per-device bytes of the train state with FSDP over 8 devices, divided by those on one.

  .venv/bin/python bench/fsdp_memory.py                       # AtomSkill paper + cpu, USR paper
  .venv/bin/python bench/fsdp_memory.py --config=configs/atomskill.py:paper --top=12

Runs on 8 fake CPU devices. The train state of each stage is built as the trainer
builds it (training/train_state.create_train_state with `abstract_only`: shapes and the
shardings the trainer would place, from the models' partition-spec annotations through
training/mesh.state_shardings; nothing is allocated, not even the ResNet-18) on a mesh
data=8 x fsdp=1 and on data=1 x fsdp=8. Per-device bytes are each leaf's shard shape
times its item size. With every array split 8 ways the ratio is 0.125; what stays
replicated raises it, and the table lists the largest replicated arrays under fsdp=8
(with whether they carry no annotation or one the mesh could not split evenly).

Columns: params = all nnx.Params (trained and frozen); state = other model variables
(VQ usage counts and the recent-encodings buffer); opt = the optimiser state (AdamW
moments of the stage's trained params); total = the whole TrainState (with the EMA
where the stage keeps one).

USR's paper config reads a CLIP ViT-B/16 directory; only its shapes matter here, so
the bench writes that model's config.json and builds the towers abstractly instead of
loading weights (`_abstract_clip`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

if __name__ == "__main__":
    # Before any other jax use: the backend is fixed at its first use.
    jax.config.update("jax_num_cpu_devices", 8)

from flax import nnx  # noqa: E402
from jax.sharding import PartitionSpec  # noqa: E402

from atomskill_jax.methods import registry  # noqa: E402
from atomskill_jax.training import config_flags, mesh as mesh_lib, optimizer  # noqa: E402
from atomskill_jax.training import train_state as ts  # noqa: E402

DEFAULT_CONFIGS = ("configs/atomskill.py:paper", "configs/atomskill.py:cpu", "configs/usr.py:paper")
DEVICES = 8

# openai/clip-vit-base-patch16's config.json (the fields clip_loading reads).
CLIP_VIT_B16 = {
    "model_type": "clip", "projection_dim": 512, "logit_scale_init_value": 2.6592,
    "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                    "num_hidden_layers": 12, "vocab_size": 49408,
                    "max_position_embeddings": 77, "eos_token_id": 2},
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072,
                      "num_attention_heads": 12, "num_hidden_layers": 12, "image_size": 224,
                      "patch_size": 16},
}


def fill_dims(config, action: int = 4, proprio: int = 4, state: int = 39) -> None:
    """The dimensions the trainer fills from the data (trainer.fill_model_dims), with
    MetaWorld's sizes, where the model config has the key."""
    dims = {"action_dim": action, "proprio_dim": proprio,
            "state_dim": state if config.data.use_state else 0,
            "use_state": bool(config.data.use_state),
            "cameras": tuple(config.data.cameras), "image_size": tuple(config.data.image_size)}
    with config.unlocked():
        for key, value in dims.items():
            if key in config.model:
                config.model[key] = value


def _abstract_clip(directory):
    """load_clip's module without its weights (shapes and annotations are the same:
    load_clip builds this module abstractly and only sets values)."""
    from atomskill_jax.models.clip import CLIPModel
    from atomskill_jax.models.clip_loading import read_clip_config

    text, vision, top = read_clip_config(os.path.join(directory, "config.json"))
    return CLIPModel(text, vision, top["projection_dim"], rngs=nnx.Rngs(0),
                     logit_scale_init_value=top["logit_scale_init_value"])


@contextlib.contextmanager
def shapes_only_clip(config):
    """A config whose CLIP (USR's scene_encoder='clip') is built from ViT-B/16's
    config.json without weights; other configs pass through."""
    model = config.model
    if model.get("scene_encoder") != "clip":
        yield
        return
    from atomskill_jax.models import clip_loading

    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(CLIP_VIT_B16, f)
        with model.unlocked():
            model.clip_dir = tmp
        original = clip_loading.load_clip
        clip_loading.load_clip = _abstract_clip
        try:
            yield
        finally:
            clip_loading.load_clip = original


def leaf_bytes(leaf) -> int:
    """Bytes of one device's shard of an abstract array carrying its sharding."""
    return math.prod(leaf.sharding.shard_shape(tuple(leaf.shape))) * leaf.dtype.itemsize


def tree_bytes(tree) -> int:
    return sum(leaf_bytes(x) for x in jax.tree.leaves(tree))


def abstract_state(config, stage, fsdp: int, devices=None):
    """(abstract TrainState carrying the trainer's shardings, its mesh) of one stage on
    a mesh data x fsdp of `devices` (default: the first 8)."""
    devices = list(devices if devices is not None else jax.devices()[:DEVICES])
    mesh = mesh_lib.make_mesh(data=len(devices) // fsdp, fsdp=fsdp, devices=devices)
    tx, _ = optimizer.make_optimizer(config.optim, 1000)
    with shapes_only_clip(config):
        _, abstract, _ = ts.create_train_state(config, stage, tx, mesh, abstract_only=True)
    return abstract, mesh


def state_bytes(abstract) -> dict:
    return {"params": tree_bytes(abstract.params) + tree_bytes(abstract.frozen),
            "state": tree_bytes(abstract.rest), "opt": tree_bytes(abstract.opt_state),
            "total": tree_bytes(abstract)}


def replicated_leaves(abstract) -> list[dict]:
    """Model variables left whole on every device, largest first: their path, shape,
    bytes, and whether the model annotated them (annotation dropped by _fit_spec: no
    dimension the mesh splits evenly) or not."""
    out = []
    for part in ("params", "frozen", "rest"):
        tree = getattr(abstract, part)
        specs = dict(nnx.to_flat_state(nnx.get_partition_spec(tree)))
        for path, leaf in nnx.to_flat_state(tree):
            value = leaf.get_value() if hasattr(leaf, "get_value") else leaf
            if any(axis is not None for axis in value.sharding.spec):
                continue
            spec = specs.get(path)
            spec = spec.get_value() if hasattr(spec, "get_value") else spec
            annotated = isinstance(spec, PartitionSpec) and any(a is not None for a in spec)
            out.append({"path": "/".join(map(str, path)), "shape": tuple(value.shape),
                        "bytes": leaf_bytes(value),
                        "why": "annotation does not divide" if annotated else "no annotation"})
    return sorted(out, key=lambda r: -r["bytes"])


def measure(config, stage_name: str, devices=None) -> dict:
    """Per-device bytes at fsdp=1 and fsdp=8 of one stage, and the replicated leaves."""
    stage = ts.resolve_stage(config, stage_name)
    one, _ = abstract_state(config, stage, 1, devices)
    eight, _ = abstract_state(config, stage, DEVICES, devices)
    return {"fsdp1": state_bytes(one), "fsdp8": state_bytes(eight),
            "replicated": replicated_leaves(eight)}


def _mb(n: int) -> str:
    return f"{n / 2**20:9.2f}"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = config_flags.split_config_args(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", action="append", default=None,
                   help=f"config file:variant (repeatable; default {', '.join(DEFAULT_CONFIGS)})")
    p.add_argument("--top", type=int, default=6, help="largest replicated leaves listed")
    args = p.parse_args(rest)
    if jax.device_count() < DEVICES:
        raise SystemExit(f"needs {DEVICES} devices, has {jax.device_count()} (run it as a script: "
                         "it asks for 8 fake CPU devices before jax starts)")
    print(f"per-device MiB, mesh data=8 x fsdp=1 vs data=1 x fsdp=8 ({DEVICES} "
          f"{jax.devices()[0].platform} devices); ratio = fsdp8 / fsdp1 (ideal 0.125)")
    head = (f"{'config':28s} {'stage':9s} {'params@1':>9s} {'params@8':>9s} {'ratio':>6s} "
            f"{'opt@1':>9s} {'opt@8':>9s} {'ratio':>6s} {'state@8':>9s} {'total@1':>9s} "
            f"{'total@8':>9s} {'ratio':>6s}")
    details = []
    print(head)
    for spec in args.config or DEFAULT_CONFIGS:
        config = config_flags.apply_overrides(config_flags.load_config(spec), overrides)
        fill_dims(config)
        for stage in registry.get_spec(config).stage_names(config):
            r = measure(config, stage)
            a, b = r["fsdp1"], r["fsdp8"]
            print(f"{spec.replace('configs/', ''):28s} {stage:9s} {_mb(a['params'])} "
                  f"{_mb(b['params'])} {b['params'] / a['params']:6.3f} {_mb(a['opt'])} "
                  f"{_mb(b['opt'])} {b['opt'] / a['opt']:6.3f} {_mb(b['state'])} "
                  f"{_mb(a['total'])} {_mb(b['total'])} {b['total'] / a['total']:6.3f}")
            details.append((spec, stage, r))
    seen = set()
    for spec, stage, r in details:
        if spec in seen:  # the model variables are the same in every stage
            continue
        seen.add(spec)
        rows = r["replicated"]
        total = sum(x["bytes"] for x in rows)
        print(f"\n{spec}: {len(rows)} model arrays replicated under fsdp=8, "
              f"{total / 2**20:.2f} MiB per device; largest:")
        for x in rows[:args.top]:
            print(f"  {x['bytes'] / 2**20:8.3f} MiB  {str(x['shape']):18s} {x['why']:26s} "
                  f"{x['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
