"""Learning rate x batch size grid for the skill stage.

  atomskill sweep --config=configs/atomskill.py:cpu --sweep=configs/sweeps/learning_rate.py \
      --workdir=/tmp/lr --print-commands
"""

from __future__ import annotations


def get_sweep(arg: str = "") -> list[dict]:
    return [{"name": f"lr{lr:g}_bs{bs}", "optim.lr": lr, "data.batch_size": bs,
             "stage": "skill"}
            for lr in (3e-4, 1e-3, 3e-3) for bs in (32, 64)]
