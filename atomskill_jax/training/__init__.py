"""atomskill_jax.training."""
