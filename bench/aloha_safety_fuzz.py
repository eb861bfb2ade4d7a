"""Fuzzed policy outputs through the ALOHA bridge's safety layer into simulated arms.

    python bench/aloha_safety_fuzz.py                      # 100,000 fuzzed ticks
    python bench/aloha_safety_fuzz.py --ticks=20000 --seed=1

Each tick the policy side offers one of: random targets far outside the ranges, huge
finite values, NaN/inf entries, wrong shapes or types, a sudden jump held for a while, a
run of missing commands (the watchdog's case) or small plausible moves. The bridge
(`AlohaRealEnv`, fake clock at 50 Hz, no sleeping) filters them and writes to
`SimulatedArmsIO` (gym-aloha's joint-space physics, reset every `--episode` ticks).
Every command reaching the arm is checked by `CommandAudit` on the way in (limits,
per-step change from the previous command, finiteness).

Rows: ticks, commands received, rejected, clipped, rate-limited, watchdog holds (and
stalls), max violation reaching the arm (rad beyond a limit or a step; must be 0), and
time: the bridge + safety layer per command against a null arm (conversion, checks,
clipping, counters), and per tick with the physics (20 ms of simulated time).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from atomskill_jax.envs import aloha_real as real  # noqa: E402
from atomskill_jax.envs.aloha_safety import CommandAudit, SafetyConfig  # noqa: E402

DROP = None
BAD_SHAPES = [np.zeros(13), np.zeros((2, 7)), np.zeros((8, 14)), None, "go", 1.0,
              np.ones(15), [[0.1] * 7, [0.2]], np.ones(14, bool)]


def fuzz(rng: np.random.Generator, ticks: int) -> list:
    """`ticks` policy outputs (policy units); DROP marks a tick without a command."""
    out, target = [], real.HOME_POSE.copy()
    while len(out) < ticks:
        kind = rng.integers(9)
        if kind == 0:
            out.append(rng.uniform(-6, 6, 14))
        elif kind == 1:
            out.append(rng.choice([-1, 1], 14) * 10.0 ** rng.uniform(2, 308, 14))
        elif kind == 2:
            bad = target.copy()
            bad[rng.integers(14, size=rng.integers(1, 4))] = rng.choice([np.nan, np.inf, -np.inf])
            out.append(bad)
        elif kind == 3:
            out.append(BAD_SHAPES[rng.integers(len(BAD_SHAPES))])
        elif kind == 4:
            target = rng.uniform(-2, 2, 14)
            out += [target] * int(rng.integers(1, 20))
        elif kind == 5:
            out += [DROP] * int(rng.integers(1, 12))
        else:
            target = target + rng.normal(0, 0.02, 14)
            out.append(target)
    return out[:ticks]


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, seconds):
        self.t += seconds


class AuditedIO:
    """Checks each command on its way to the wrapped arm."""

    def __init__(self, io, audit: CommandAudit):
        self.io, self.audit = io, audit

    def read(self):
        return self.io.read()

    def write(self, command):
        self.audit.check(command)
        self.io.write(command)

    def close(self):
        self.io.close()


class NullIO(real.SimulatedArmsIO):
    def write(self, command):  # the arm does nothing: times the bridge alone
        pass


def run_with_arm(items: list, config: SafetyConfig, episode: int) -> dict:
    clock = FakeClock()
    sim = real.SimulatedArmsIO(cameras=())
    audit = CommandAudit(config)
    env = real.AlohaRealEnv(AuditedIO(sim, audit), safety=config, cameras=(),
                            clock=clock, sleep=clock.sleep)
    report_every = max(1, len(items) // 10)
    start = time.perf_counter()
    for i, action in enumerate(items):
        if i % episode == 0:
            sim.reset(seed=i // episode)
            env.reset(home=None)
            audit.reset(real.robot_position(sim.read()))
        if action is DROP:
            env.tick()
            env.rate.wait()
        else:
            env.step(action)
        if (i + 1) % report_every == 0:
            print(f"  {i + 1}/{len(items)} ticks, {audit.violations} violations", flush=True)
    seconds = time.perf_counter() - start
    env.close()
    return {"counters": env.counters, "audit": audit, "us_per_tick": seconds / len(items) * 1e6}


def time_bridge(items: list, config: SafetyConfig, repeats: int = 3) -> float:
    """Best-of-`repeats` microseconds per command through `tick` with a null arm."""
    clock = FakeClock()
    env = real.AlohaRealEnv(NullIO(cameras=()), safety=config, cameras=(), clock=clock)
    env.reset(home=None)
    commands = [a for a in items if a is not DROP]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for action in commands:
            env.tick(action)
        best = min(best, time.perf_counter() - start)
    return best / len(commands) * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episode", type=int, default=2_000, help="ticks between sim resets")
    args = parser.parse_args(argv)
    config = SafetyConfig()
    items = fuzz(np.random.default_rng(args.seed), args.ticks)
    print(f"{args.ticks} fuzzed ticks (seed {args.seed}), safety config: "
          f"max_joint_step={config.max_joint_step} rad, max_gripper_step="
          f"{config.max_gripper_step} rad, watchdog_timeout={config.watchdog_timeout} s")
    result = run_with_arm(items, config, args.episode)
    bridge_us = time_bridge(items, config)
    c, audit = result["counters"], result["audit"]
    rows = [
        ("ticks", f"{args.ticks}"),
        ("commands received", f"{c['commands']}"),
        ("rejected", f"{c['rejected']}  {c['rejected_by_reason']}"),
        ("clipped (channels)", f"{c['clipped']} ({c['clipped_channels']})"),
        ("rate-limited (channels)", f"{c['rate_limited']} ({c['rate_limited_channels']})"),
        ("watchdog holds (stalls)", f"{c['watchdog_holds']} ({c['watchdog_trips']})"),
        ("commands reaching the arm", f"{audit.commands}"),
        ("violations reaching the arm", f"{audit.violations}  (non-finite {audit.non_finite}, "
                                        f"shape {audit.wrong_shape}, limit "
                                        f"{audit.limit_violations}, rate {audit.rate_violations})"),
        ("max violation reaching the arm", f"{audit.max_violation:.3g} rad  (largest step excess "
                                           f"{audit.max_rate_excess:.2g}: float64 rounding "
                                           f"below {audit.tolerance:g} is not a violation)"),
        ("us per command, bridge + safety", f"{bridge_us:.1f}"),
        ("us per tick, with the physics", f"{result['us_per_tick']:.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if audit.violations or audit.max_violation > 0:
        sys.exit("unsafe commands reached the arm")


if __name__ == "__main__":
    main()
