"""atomskill_jax.data."""
