"""MetaWorld v3 task names, suites and one written instruction per task.

Task names are given without the `-v3` suffix (`pick-place`); `canonical_task`
accepts either form. Kept free of the `metaworld` import so that suites and
instructions can be listed (and configs validated) without the simulator.
"""

from __future__ import annotations

# One clear sentence per task: what a person would say to the robot.
INSTRUCTIONS: dict[str, str] = {
    "assembly": "pick up the nut and place it onto the peg",
    "basketball": "pick up the ball and dunk it into the basket",
    "bin-picking": "pick up the cube from one bin and place it into the other bin",
    "box-close": "pick up the lid and place it onto the box to close it",
    "button-press-topdown": "press the button down from the top",
    "button-press-topdown-wall": "press the button down from the top behind the wall",
    "button-press": "press the button from the front",
    "button-press-wall": "press the button from the front behind the wall",
    "coffee-button": "push the button on the coffee machine",
    "coffee-pull": "pull the mug out from under the coffee machine",
    "coffee-push": "push the mug under the coffee machine",
    "dial-turn": "rotate the dial a full turn",
    "disassemble": "pick the nut up and off the peg",
    "door-close": "push the door closed",
    "door-lock": "turn the lock on the door to lock it",
    "door-open": "pull the door open",
    "door-unlock": "turn the lock on the door to unlock it",
    "hand-insert": "insert the hand with the block into the hole",
    "drawer-close": "push the drawer closed",
    "drawer-open": "pull the drawer open",
    "faucet-open": "rotate the faucet handle to open it",
    "faucet-close": "rotate the faucet handle to close it",
    "hammer": "pick up the hammer and hammer the nail into the wall",
    "handle-press-side": "press the handle down from the side",
    "handle-press": "press the handle down",
    "handle-pull-side": "pull the handle up from the side",
    "handle-pull": "pull the handle up",
    "lever-pull": "pull the lever up",
    "pick-place-wall": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole": "pick the peg up out of the hole",
    "pick-place": "pick up the puck and place it at the goal",
    "plate-slide": "slide the plate into the cabinet",
    "plate-slide-side": "slide the plate into the cabinet from the side",
    "plate-slide-back": "slide the plate out of the cabinet",
    "plate-slide-back-side": "slide the plate out of the cabinet from the side",
    "peg-insert-side": "pick up the peg and insert it sideways into the hole",
    "peg-unplug-side": "unplug the peg sideways from the hole",
    "soccer": "kick the ball into the goal",
    "stick-push": "grasp the stick and push the box with it",
    "stick-pull": "grasp the stick and pull the box with it",
    "push": "push the puck to the goal",
    "push-wall": "push the puck to the goal around the wall",
    "push-back": "push the puck backwards to the goal",
    "reach": "reach to the goal position",
    "reach-wall": "reach to the goal position over the wall",
    "shelf-place": "pick up the block and place it onto the shelf",
    "sweep-into": "sweep the puck into the hole",
    "sweep": "sweep the puck off the table",
    "window-open": "push the window open",
    "window-close": "push the window closed",
}

ALL_TASKS: tuple[str, ...] = tuple(INSTRUCTIONS)

MT10: tuple[str, ...] = (
    "reach", "push", "pick-place", "door-open", "drawer-open", "drawer-close",
    "button-press-topdown", "peg-insert-side", "window-open", "window-close",
)
ML45_TEST: tuple[str, ...] = (
    "bin-picking", "box-close", "hand-insert", "door-lock", "door-unlock",
)
ML45_TRAIN: tuple[str, ...] = tuple(t for t in ALL_TASKS if t not in ML45_TEST)

# The six-task analogue of the AtomSkill paper's RLBench suite: three
# motion-pattern tasks and three spatial-localisation tasks.
RLBENCH6_MOTION: tuple[str, ...] = ("box-close", "sweep-into", "drawer-close")
RLBENCH6_SPATIAL: tuple[str, ...] = ("pick-place", "shelf-place", "pick-out-of-hole")

SUITES: dict[str, tuple[str, ...]] = {
    "rlbench6": RLBENCH6_MOTION + RLBENCH6_SPATIAL,
    "mt10": MT10,
    "mt50": ALL_TASKS,
    "ml45_train": ML45_TRAIN,
    "ml45_test": ML45_TEST,
}


def canonical_task(name: str) -> str:
    """`pick-place-v3` or `pick-place` -> `pick-place`; unknown names raise with the list."""
    base = name.strip()
    if base.endswith("-v3"):
        base = base[: -len("-v3")]
    if base not in INSTRUCTIONS:
        raise ValueError(
            f"unknown MetaWorld task {name!r}; known tasks: {', '.join(ALL_TASKS)}")
    return base


def resolve_tasks(suite: str | None = None, tasks: str | list[str] | None = None) -> tuple[str, ...]:
    """Tasks from a suite name or an explicit list (comma-separated string or list)."""
    if (suite is None) == (tasks is None or tasks == []):
        raise ValueError("give exactly one of a suite name or a task list")
    if suite is not None:
        if suite not in SUITES:
            raise ValueError(f"unknown suite {suite!r}; known suites: {', '.join(SUITES)}")
        return SUITES[suite]
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t.strip()]
    resolved = tuple(canonical_task(t) for t in tasks)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"task list names a task twice: {list(tasks)}")
    return resolved


def instruction(task: str) -> str:
    return INSTRUCTIONS[canonical_task(task)]
