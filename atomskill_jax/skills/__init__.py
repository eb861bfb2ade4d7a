"""atomskill_jax.skills: keyframe segmentation, skill vocabulary, annotation backends.

    from atomskill_jax.skills import annotate_episode, make_annotator
    fields = annotate_episode(action=..., action_abs=..., proprio=...,
                              embodiment="metaworld_sawyer",
                              annotator=make_annotator("rule"), instruction=...)

Modules: embodiments (gripper channels per robot), changepoint + keyframes
(segmentation), vocabulary (canonical labels, free-text mapping), types, motion,
rule_annotator, vlm_client + vlm_annotator + png (VLM backend), annotate (glue and
per-step fields).
"""

from atomskill_jax.skills.annotate import (EpisodeAnnotation, annotate_arrays,
                                           annotate_episode, make_annotator, segment_infos,
                                           skill_step_fields)
from atomskill_jax.skills.embodiments import (EMBODIMENTS, GripperSpec, get_embodiment,
                                              register_embodiment)
from atomskill_jax.skills.keyframes import Segmentation, segment_episode
from atomskill_jax.skills.types import Annotator, SegmentInfo, SkillAnnotation
from atomskill_jax.skills.vocabulary import LABELS, VOCABULARY, LabelMapper, label_id

__all__ = [
    "EMBODIMENTS", "GripperSpec", "get_embodiment", "register_embodiment",
    "Segmentation", "segment_episode",
    "LABELS", "VOCABULARY", "LabelMapper", "label_id",
    "Annotator", "SegmentInfo", "SkillAnnotation",
    "EpisodeAnnotation", "annotate_arrays", "annotate_episode", "make_annotator",
    "segment_infos", "skill_step_fields",
]
