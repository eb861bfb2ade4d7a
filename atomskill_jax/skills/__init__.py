"""atomskill_jax.skills."""
