"""Where MetaWorld's offscreen rendering time goes, and how fast it can be (issue 13 §3).

    python bench/render_speed.py [--frames=20] [--rounds=3] [--backends=egl,osmesa] [--size=64,128]

For each GL backend (a fresh process each: MUJOCO_GL is read at import) and image size,
renders pick-place's `corner` camera mid-episode (the expert's gripper over the table, so
the arm casts its shadow) with:
- `before`: MetaWorldEnv's renderer before render settings existed (MetaWorld's
  640x480 offscreen buffer, its 4096 shadow map);
- the project's named qualities (`envs.metaworld.RENDER_QUALITIES`), as `MetaWorldEnv`
  renders them (`render_quality=`);
- one part at a time (shadow map size, reflections, shadows, multisampling), to show
  where the time goes.
Prints frames/s (the best of `rounds` interleaved rounds, since the machine is shared)
and the change against MetaWorld's own image: mean absolute pixel change (0-255) and the
share of pixels changed by more than 16 levels (visible). Runs in worker processes that
never import TensorFlow (see envs/metaworld.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import mujoco
from atomskill_jax.envs import metaworld as mw

frames, rounds = int(sys.argv[2]), int(sys.argv[3])
sizes = [int(s) for s in sys.argv[4].split(",")]
S = mw.RenderSettings
VARIANTS = {"before (640x480 buffer)": "before"}
VARIANTS.update({f"quality {q}": q for q in mw.RENDER_QUALITIES})
VARIANTS.update({
    "shadow map 2048": S(shadow_size=2048),
    "shadow map 512": S(shadow_size=512),
    "shadow map 256": S(shadow_size=256),
    "no reflections": S(reflections=False),
    "1024, no reflections": S(shadow_size=1024, reflections=False),
    "no shadows, no refl.": S(shadows=False, reflections=False),
    "no multisampling": "no_msaa",
})


def make(size, variant):
    env = mw.MetaWorldEnv("pick-place", cameras=("corner",), image_size=(size, size),
                          render_quality=variant if isinstance(variant, S) or
                          variant in mw.RENDER_QUALITIES else None)
    env.set_layout(0)
    obs = env.reset()
    policy = mw.expert_policy("pick-place")
    for _ in range(40):  # reach towards the puck: the arm is over the table
        obs, *_ = env.step(np.clip(policy.get_action(obs), -1, 1))
    if variant in ("before", "no_msaa"):
        model = env.env.model
        if variant == "no_msaa":
            model.vis.quality.offsamples = 0
            model.vis.global_.offwidth = model.vis.global_.offheight = size
        renderer = mujoco.Renderer(model, height=size, width=size)

        def frame():
            renderer.update_scene(env.env.data, camera="corner")
            return renderer.render()[::-1, ::-1]  # as MetaWorldEnv turns corner images
        return env, frame, renderer.close
    return env, lambda: env.render()["corner"], lambda: None


rows = []
for size in sizes:
    made = {name: make(size, v) for name, v in VARIANTS.items()}
    images = {name: f() for name, (_, f, _) in made.items()}
    best = {name: 0.0 for name in made}
    for _ in range(rounds):
        for name, (_, frame, _) in made.items():
            start = time.perf_counter()
            for _ in range(frames):
                frame()
            best[name] = max(best[name], frames / (time.perf_counter() - start))
    reference = images["quality metaworld"].astype(np.float32)
    for name, (env, _, close) in made.items():
        change = np.abs(images[name].astype(np.float32) - reference)
        rows.append({"size": size, "variant": name, "fps": best[name],
                     "pixel_change": float(change.mean()),
                     "visible": float((change.max(-1) > 16).mean())})
        close()
        env.close()
print(json.dumps(rows))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--backends", default="egl,osmesa")
    p.add_argument("--size", default="64,128")
    args = p.parse_args(argv)
    print(f"{'backend':8s} {'size':>5s} {'variant':24s} {'frames/s':>9s} {'pixel change':>13s} "
          f"{'visible':>8s}")
    for backend in args.backends.split(","):
        env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
        done = subprocess.run([sys.executable, "-c", WORKER, REPO, str(args.frames),
                               str(args.rounds), args.size],
                              capture_output=True, text=True, env=env, timeout=3600)
        if done.returncode:
            print(f"{backend:8s} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        for row in json.loads(done.stdout.strip().splitlines()[-1]):
            print(f"{backend:8s} {row['size']:5d} {row['variant']:24s} {row['fps']:9.1f} "
                  f"{row['pixel_change']:13.2f} {100 * row['visible']:7.2f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
