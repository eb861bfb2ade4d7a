"""The few-shot protocol of the USR paper's Table 1 as a sweep over demonstrations per task.

  atomskill reproduce usr_table1 --out=/tmp/usr_t1       # data, training, eval, the table
  atomskill sweep --config=configs/usr.py:cpu --workdir=/tmp/usr_t1 --print-commands \
      --sweep=configs/sweeps/usr_shots.py:rows=usr+usr_no_skill,shots=5+10,data=/tmp/usr_t1/data,pretrain=/tmp/usr_t1/usr_pretrain
  atomskill sweep --config=configs/mlp.py:cpu --workdir=/tmp/usr_t1 --print-commands \
      --sweep=configs/sweeps/usr_shots.py:rows=mlp,shots=5+10,data=/tmp/usr_t1/data

Every row trains on ml45_test built with k demonstrations per task into DATA/ml45_test_k<k>
(`atomskill build-data metaworld --suite=ml45_test --episodes-per-task=k --out=...`);
the USR rows adapt from one Stage I pre-training (PRETRAIN/pretrain/checkpoints, trained
on ml45_train) and normalise with its statistics, so the frozen encoder sees the scale it
was trained on; AtomSkill and the MLP floor train from scratch on the same demonstrations.
A run is `<row>_k<k>`. Values of `shots` and `rows` are joined by "+" (the sweep
argument itself is comma-separated).
"""

from __future__ import annotations

SHOTS = (5, 10, 50)  # demonstrations per task of the seed's Table 1
PRETRAIN_SUITE, TEST_SUITE = "ml45_train", "ml45_test"
PRETRAIN_DEMOS = 25  # per ml45_train task

# Row -> its config, the stage `atomskill eval` loads (whose checkpoint step a report is
# matched against), whether it adapts from the pre-training, and its own overrides.
ROWS = {
    "usr": {"title": "USR", "config": "usr.py:cpu", "policy_stage": "adapt",
            "from_pretrain": True, "overrides": {"stage": "adapt"}},
    "usr_no_skill": {"title": "USR (No Skill)", "config": "usr.py:cpu", "policy_stage": "adapt",
                     "from_pretrain": True,
                     "overrides": {"stage": "adapt", "model.policy_condition": "instruction"}},
    "atomskill": {"title": "AtomSkill", "config": "atomskill.py:cpu", "policy_stage": "sampler",
                  "from_pretrain": False, "overrides": {}},
    "mlp": {"title": "MLP", "config": "mlp.py:cpu", "policy_stage": "skill",
            "from_pretrain": False, "overrides": {}},
}


def datasets(suite: str) -> tuple:
    return ({"name": f"metaworld_scripted/{suite}", "weight": 1.0},)


def test_data_dir(data_root: str, shots: int) -> str:
    """Where ml45_test with `shots` demonstrations per task is built."""
    return f"{data_root.rstrip('/')}/{TEST_SUITE}_k{shots}"


def pretrain_checkpoints(pretrain_workdir: str) -> str:
    return f"{pretrain_workdir.rstrip('/')}/pretrain/checkpoints"


def run_name(row: str, shots: int) -> str:
    return f"{row}_k{shots}"


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split("+") if v.strip())
    if not values or any(v < 1 for v in values) or len(set(values)) != len(values):
        raise ValueError(f"configs/sweeps/usr_shots.py: shots={text!r}: give distinct "
                         f"positive counts joined by '+', e.g. shots=5+10+50")
    return values


def get_sweep(arg: str = "") -> list[dict]:
    """One override dict per (row, k): `arg` "rows=R1+R2,shots=5+10,data=ROOT,pretrain=P"
    (rows default to the USR rows, shots to SHOTS; pretrain is needed by the USR rows)."""
    rows, shots, data_root, pretrain = ("usr", "usr_no_skill"), SHOTS, None, None
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        if key == "rows":
            rows = tuple(r for r in value.split("+") if r)
        elif key == "shots":
            shots = _ints(value)
        elif key == "data":
            data_root = value
        elif key == "pretrain":
            pretrain = value
        else:
            raise ValueError(f"configs/sweeps/usr_shots.py: unknown argument {part!r} "
                             f"(expected rows=..., shots=..., data=DIR, pretrain=DIR)")
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        raise ValueError(f"configs/sweeps/usr_shots.py: unknown rows {unknown}; expected some "
                         f"of {'+'.join(ROWS)}")
    if data_root is None:
        raise ValueError("configs/sweeps/usr_shots.py: give data=DIR, the root holding "
                         f"{TEST_SUITE}_k<k> builds")
    if pretrain is None and any(ROWS[r]["from_pretrain"] for r in rows):
        raise ValueError("configs/sweeps/usr_shots.py: the USR rows adapt from a pre-training: "
                         "give pretrain=DIR (the Stage I workdir)")
    runs = []
    for k in shots:
        for row in rows:
            overrides = {"name": run_name(row, k), **ROWS[row]["overrides"],
                         "data.data_dir": test_data_dir(data_root, k),
                         "data.datasets": datasets(TEST_SUITE)}
            if ROWS[row]["from_pretrain"]:
                overrides["train.init_from"] = pretrain_checkpoints(pretrain)
                overrides["data.statistics_from"] = pretrain_checkpoints(pretrain)
            runs.append(overrides)
    return runs
