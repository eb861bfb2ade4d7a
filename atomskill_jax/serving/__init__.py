"""atomskill_jax.serving."""
