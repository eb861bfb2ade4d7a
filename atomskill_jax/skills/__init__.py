"""atomskill_jax.skills: keyframe segmentation, skill vocabulary, annotation backends."""

from atomskill_jax.skills.embodiments import (EMBODIMENTS, GripperSpec, get_embodiment,
                                              register_embodiment)
from atomskill_jax.skills.keyframes import Segmentation, segment_episode

__all__ = [
    "EMBODIMENTS", "GripperSpec", "get_embodiment", "register_embodiment",
    "Segmentation", "segment_episode",
]
