"""atomskill_jax: skill-based multi-task imitation learning in JAX / Flax NNX."""

__version__ = "0.1.0"
