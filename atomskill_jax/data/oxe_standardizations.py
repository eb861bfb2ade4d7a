"""Registered standardisations of foreign RLDS datasets (the form: standardize_spec.py).

Written from the datasets' published feature layouts (their tensorflow-datasets
catalogue pages); the gripper readings follow the datasets' documentation and Octo's
Open X-Embodiment transforms. Select one per dataset entry:
`config.data.datasets = ({"name": ".../fractal20220817_data/0.1.0", "standardize":
"fractal"}, ...)`, or start an inline mapping from one with {"base": "fractal", ...}.
`register_standardization` adds more.

Camera roles: "front" is the main third-person camera, "side" a second one, "wrist"
the hand camera (the names configs/atomskill.py's `paper` variant reads).
"""

from __future__ import annotations

from typing import Any, Mapping

# RT-1 (Google's fractal20220817_data in Open X-Embodiment, 3 Hz). steps/action:
# world_vector [3] and rotation_delta [3] (roll/pitch/yaw): commanded end-effector
# displacements in the base frame; gripper_closedness_action [1]: a *relative* command
# (+1 close, -1 open, ~0 keep; Octo's rt1 transform reads it the same way);
# terminate_episode, base_displacement_*: not used. steps/observation: image
# [256, 320, 3], base_pose_tool_reached [7] (position + quaternion), gripper_closed [1]
# (1 = closed), natural_language_instruction, natural_language_embedding [512] (a
# Universal Sentence Encoder vector: not the project's encoder, so not used).
# action_abs: the displacements integrated from the episode start (the published layout
# does not tie their scale to base_pose_tool_reached, so no pose is added).
FRACTAL = {
    "description": "RT-1 robot (fractal20220817_data): xyz + rpy delta + gripper",
    "action_type": "delta",
    "action": [
        "action/world_vector",
        "action/rotation_delta",
        {"key": "action/gripper_closedness_action",
         "gripper": {"kind": "relative", "closed": 1.0, "open": -1.0, "threshold": 0.1}},
    ],
    # Hand pose, then the opening (1 - closed): the project's proprio reads the gripper
    # as an opening (MetaWorld: 1 open, lower closed).
    "proprio": ["observation/base_pose_tool_reached",
                {"key": "observation/gripper_closed", "scale": -1.0, "offset": 1.0}],
    "cameras": {"front": "image"},
    "instruction": "observation/natural_language_instruction",
    "language_embedding": "encode",
    "ee_position": [0, 1, 2],
    "min_hold": 2,
    "min_segment_len": 2,
}

# BridgeData V2 as RAIL publishes it for Octo (bridge_dataset, 5 Hz). steps/action [7]:
# xyz delta, rpy delta, gripper (absolute, 1 = open, 0 = closed, with a few intermediate
# values while it moves: binarised, as Octo does); steps/observation: image_0..image_3
# [256, 256, 3] (image_0 the fixed over-the-shoulder camera), state [7] (xyz, rpy,
# gripper); steps/language_instruction, steps/language_embedding [512] (USE: not used).
# action_abs: state + delta (Octo relabels bridge actions with state differences, so
# the two share units and frame).
BRIDGE_DATASET = {
    "description": "BridgeData V2 WidowX (bridge_dataset): xyz + rpy delta + gripper",
    "action_type": "delta",
    "action": [
        {"key": "action[:6]", "absolute": {"pose": "observation/state[:6]"}},
        {"key": "action[6]",
         "gripper": {"kind": "absolute", "closed": 0.0, "open": 1.0, "binarize": True}},
    ],
    "proprio": ["observation/state"],
    "cameras": {"front": "image_0", "side": "image_1"},
    "instruction": "language_instruction",
    "language_embedding": "encode",
    "ee_position": [0, 1, 2],
    "min_hold": 3,
    "min_segment_len": 3,
}

STANDARDIZATIONS: dict[str, Mapping[str, Any]] = {}


def register_standardization(name: str, mapping: Mapping[str, Any], *,
                             overwrite: bool = False) -> None:
    """Add a named standardisation (checked now, so a typo fails at import, not in a run)."""
    from atomskill_jax.data.standardize_spec import parse_standardization

    if name in STANDARDIZATIONS and STANDARDIZATIONS[name] != mapping and not overwrite:
        raise ValueError(f"standardisation {name!r} is already registered differently; "
                         f"pass overwrite=True to replace it")
    parse_standardization(dict(mapping), f"standardisation {name!r}",
                          registry={**STANDARDIZATIONS, name: mapping})
    STANDARDIZATIONS[name] = mapping


for _names, _mapping in ((("fractal", "fractal20220817_data", "rt1"), FRACTAL),
                         (("bridge_dataset", "bridge_v2"), BRIDGE_DATASET)):
    for _name in _names:
        register_standardization(_name, _mapping)
