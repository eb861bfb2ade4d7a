"""The atomskill method. Its spec (`SPEC`, the method contract) lives in `spec.py` and is
imported on first access, so the numpy runtime (`runtime.py`) imports without flax:
exported policies load with jax and numpy only."""


def __getattr__(name):
    if name == "SPEC":
        from atomskill_jax.methods.atomskill.spec import SPEC

        return SPEC
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
