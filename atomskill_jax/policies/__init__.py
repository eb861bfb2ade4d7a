"""atomskill_jax.policies."""
