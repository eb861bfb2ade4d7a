"""Skill fields for datasets that have none, derived at read time from the gripper.

Foreign datasets (Open X-Embodiment) carry no skill annotation. The project's builders
cut episodes at gripper changes and label the pieces with the rule annotator
(skills/keyframes.py, skills/rule_annotator.py); here the very same code runs on each
episode as it is read (`tf.numpy_function`, marked stateless: it is a pure function of
its inputs, so tf.data may checkpoint and parallelise it), so a standardised dataset's
segments, keyframes and keyposes are those a builder would have written.
"""

from __future__ import annotations

import numpy as np

from atomskill_jax.data.standardize_spec import CLOSED, OPEN
from atomskill_jax.data.tf_setup import tf
from atomskill_jax.skills.annotate import annotate_arrays
from atomskill_jax.skills.embodiments import GripperSpec
from atomskill_jax.skills.vocabulary import label_id


def gripper_spec(name: str, num_grippers: int, *, ee_position=(), min_hold: int = 2,
                 min_segment_len: int = 2) -> GripperSpec:
    """The embodiment of standardised grippers: channels 0..G-1 of the gripper signal
    handed to `skill_fields`, in the project's convention (closed = high), levels
    CLOSED/OPEN, so a change of at least a quarter of that range is a grasp/release."""
    return GripperSpec(name=f"standardized:{name}",
                       action_channels=tuple(range(max(num_grippers, 1))),
                       action_closed_high=True, min_contrast=0.25 * (CLOSED - OPEN),
                       min_hold=int(min_hold), min_segment_len=int(min_segment_len),
                       ee_position_channels=tuple(ee_position))


def skill_fields_numpy(gripper: np.ndarray, action_abs: np.ndarray, proprio: np.ndarray,
                       instruction: bytes | str, *, spec: GripperSpec, fixed_label: str | None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(skill_segment int32[T], skill_label_id int32[T], is_keyframe bool[T],
    keypose float32[T, A]) of one episode; `gripper` [T, G] (G may be 0: one skill)."""
    gripper = np.asarray(gripper, np.float32)
    if gripper.shape[1] == 0:  # no gripper: a constant signal, so the episode is one skill
        gripper = np.full((gripper.shape[0], 1), OPEN, np.float32)
    result = annotate_arrays(gripper, np.asarray(action_abs, np.float32),
                             np.asarray(proprio, np.float32), spec, "rule",
                             instruction=instruction)
    fields = result.fields
    labels = np.asarray(fields["skill_label_id"], np.int32)
    if fixed_label is not None:
        labels = np.full_like(labels, label_id(fixed_label))
    return (np.asarray(fields["skill_segment"], np.int32), labels,
            np.asarray(fields["is_keyframe"], bool), np.asarray(fields["keypose"], np.float32))


def skill_fields(gripper: tf.Tensor, action_abs: tf.Tensor, proprio: tf.Tensor,
                 instruction: tf.Tensor, *, spec: GripperSpec, fixed_label: str | None = None
                 ) -> dict[str, tf.Tensor]:
    """`skill_fields_numpy` inside a tf.data graph; shapes set from the inputs."""
    def run(g, a, p, text):
        return skill_fields_numpy(g, a, p, text, spec=spec, fixed_label=fixed_label)

    segment, labels, keyframe, keypose = tf.numpy_function(
        run, [gripper, action_abs, proprio, instruction],
        [tf.int32, tf.int32, tf.bool, tf.float32], stateful=False)
    num_steps = action_abs.shape[0]
    segment.set_shape([num_steps])
    labels.set_shape([num_steps])
    keyframe.set_shape([num_steps])
    keypose.set_shape(action_abs.shape)
    return {"skill_segment": segment, "skill_label_id": labels, "is_keyframe": keyframe,
            "keypose": keypose}
