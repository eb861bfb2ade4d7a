"""atomskill_jax.models."""
