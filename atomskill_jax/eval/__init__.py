"""atomskill_jax.eval."""
