"""atomskill_jax.export."""
