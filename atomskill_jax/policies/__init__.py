"""atomskill_jax.policies: one interface for every policy (`base.Policy`).

`base`: `Policy`, `PolicySpec`, `TaskInfo`, `RandomPolicy`; `scripted`:
`ScriptedExpertPolicy` (MetaWorld's experts, an oracle for evaluation and tests).
"""
