"""The AtomSkill paper's tables as variant lists over the ablation switches.

  atomskill reproduce table4 --out=/tmp/t4            # data, training, eval, the table
  atomskill sweep --config=configs/atomskill.py:cpu \
      --sweep=configs/sweeps/tables.py:table=table4,seeds=3 --workdir=W --print-commands

Each table names variants of configs/sweeps/ablations.py (the overrides live there,
once); a run is `<variant>_seed<k>`, so tables sharing a variant in one output
directory share its run (`full` is trained once for Tables 1, 4 and 5).
"""

from __future__ import annotations

import importlib.util
import os


def _ablations() -> dict:
    # Loaded by path too (sweep files are executed by path, not imported as a package).
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ablations.py")
    spec = importlib.util.spec_from_file_location("atomskill_sweep_ablations", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ABLATIONS


ABLATIONS = _ablations()

# What each variant is, for the tables' legends.
DESCRIPTIONS = {
    "full": "AtomSkill (skill tokens, temporal + semantic contrastive terms, keypose)",
    "act_baseline": "ACT-like baseline: the same decoder without skill tokens",
    "no_contrastive": "AtomSkill without both contrastive terms",
    "no_temporal": "AtomSkill without the temporal contrastive term",
    "no_semantic": "AtomSkill without the semantic contrastive term",
    "no_keypose": "AtomSkill without keypose prediction (no keypose-triggered chaining)",
}

TABLES = {
    "table1": {"title": "Table 1: AtomSkill vs an ACT-like baseline",
               "variants": ("full", "act_baseline")},
    "table4": {"title": "Table 4: ablation of the contrastive terms",
               "variants": ("full", "no_temporal", "no_semantic", "no_contrastive")},
    "table5": {"title": "Table 5: ablation of keypose prediction",
               "variants": ("full", "no_keypose")},
}

# Tables of other protocols, each run by its own module (not variants of ABLATIONS).
OTHER_TABLES = {
    "usr_table1": {"title": "USR Table 1: few-shot adaptation on MetaWorld ML45 "
                            "(atomskill_jax/eval/reproduce_usr.py, configs/sweeps/usr_shots.py)"},
}

for _name, _table in TABLES.items():  # a typo here fails at import, not after hours of training
    for _variant in _table["variants"]:
        if _variant not in ABLATIONS or _variant not in DESCRIPTIONS:
            raise ValueError(f"configs/sweeps/tables.py: {_name} names {_variant!r}, which is "
                             f"not in ABLATIONS (configs/sweeps/ablations.py) and DESCRIPTIONS")


def run_name(variant: str, seed: int) -> str:
    return f"{variant}_seed{seed}"


def get_sweep(arg: str = "") -> list[dict]:
    """The runs of one table: `arg` "table=NAME[,seeds=N]" (training seeds 0..N-1)."""
    table, seeds = None, 1
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        if key == "table":
            table = value
        elif key == "seeds":
            seeds = int(value)
        else:
            raise ValueError(f"configs/sweeps/tables.py: unknown argument {part!r} "
                             f"(expected table=NAME,seeds=N)")
    if table not in TABLES:
        raise ValueError(f"configs/sweeps/tables.py: unknown table {table!r}; expected one of "
                         f"{', '.join(TABLES)} (e.g. --sweep=configs/sweeps/tables.py:table=table1)")
    if seeds < 1:
        raise ValueError(f"configs/sweeps/tables.py: seeds must be >= 1, got {seeds}")
    # The data order follows the training seed as well as the initialisation.
    return [{"name": run_name(v, s), "seed": s, "data.seed": s, **ABLATIONS[v]}
            for v in TABLES[table]["variants"] for s in range(seeds)]
