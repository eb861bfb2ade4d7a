"""Where MetaWorld's offscreen rendering time goes, and how fast it can be (issue 13 §3).

    python bench/render_speed.py [--frames=40] [--backends=egl,osmesa] [--size=64,128]

For each GL backend (a fresh process each: MUJOCO_GL is read at import), renders the
`corner` camera of pick-place at each size with MuJoCo's scene flags switched off one
group at a time: shadows, reflections, skybox, fog/haze, and everything; and with a
small shadow map and offscreen buffer. Prints frames/s and the mean absolute pixel
change against the default image (0 = identical images). Rendering runs in a worker
process, never beside TensorFlow (see envs/metaworld.py).
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
from atomskill_jax.envs.metaworld import MetaWorldEnv

frames, sizes = int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")]
flags = mujoco.mjtRndFlag
VARIANTS = {
    "default": {},
    "no shadows": {"off": [flags.mjRND_SHADOW]},
    "no reflections": {"off": [flags.mjRND_REFLECTION]},
    "no skybox": {"off": [flags.mjRND_SKYBOX]},
    "no fog/haze": {"off": [flags.mjRND_FOG, flags.mjRND_HAZE]},
    "shadow map 512": {"shadowsize": 512},
    "all off": {"off": [flags.mjRND_SHADOW, flags.mjRND_REFLECTION, flags.mjRND_SKYBOX,
                        flags.mjRND_FOG, flags.mjRND_HAZE]},
}
rows = []
for size in sizes:
    reference = None
    for name, variant in VARIANTS.items():
        env = MetaWorldEnv("pick-place", cameras=("corner",), image_size=(size, size))
        env.set_layout(0)
        env.reset()
        model = env.env.model
        if "shadowsize" in variant:
            model.vis.quality.shadowsize = variant["shadowsize"]
        # The offscreen buffer only as large as the image (the model asks for more).
        model.vis.global_.offwidth = max(size, 1)
        model.vis.global_.offheight = max(size, 1)
        renderer = mujoco.Renderer(model, height=size, width=size)
        def frame():
            renderer.update_scene(env.env.data, camera="corner")
            for f in variant.get("off", []):
                renderer.scene.flags[f] = 0
            return renderer.render()
        image = frame()
        start = time.perf_counter()
        for _ in range(frames):
            frame()
        fps = frames / (time.perf_counter() - start)
        if reference is None:
            reference = image.astype(np.float32)
        change = float(np.abs(image.astype(np.float32) - reference).mean())
        rows.append({"size": size, "variant": name, "fps": fps, "pixel_change": change})
        renderer.close()
        env.close()
print(json.dumps(rows))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--backends", default="egl,osmesa")
    p.add_argument("--size", default="64,128")
    args = p.parse_args(argv)
    print(f"{'backend':8s} {'size':>5s} {'variant':16s} {'frames/s':>9s} {'pixel change':>13s}")
    for backend in args.backends.split(","):
        env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
        done = subprocess.run([sys.executable, "-c", WORKER, REPO, str(args.frames), args.size],
                              capture_output=True, text=True, env=env, timeout=1800)
        if done.returncode:
            print(f"{backend:8s} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        for row in json.loads(done.stdout.strip().splitlines()[-1]):
            print(f"{backend:8s} {row['size']:5d} {row['variant']:16s} {row['fps']:9.1f} "
                  f"{row['pixel_change']:13.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
