"""atomskill_jax.envs."""
