"""Where training metrics go: a JSONL file, TensorBoard event files, optionally wandb,
and a progress bar with ETA. Only process 0 writes (the metrics are global).

TensorBoard events come from `tf.summary` (TensorFlow is already a dependency of the
data side; tensorboardX is not installed). wandb is used only when asked for and
installed; asked for but missing is a clear error, not a silent skip.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping

import jax


class MetricWriter:
    def __init__(self, directory: str, *, total_steps: int, initial_step: int = 0,
                 wandb_config=None, run_config: Mapping | None = None, progress: bool = True,
                 desc: str = "train"):
        self.enabled = jax.process_index() == 0
        self.directory = directory
        self._bar = None
        self._tb = None
        self._wandb = None
        if not self.enabled:
            return
        os.makedirs(directory, exist_ok=True)
        self._jsonl = open(os.path.join(directory, "metrics.jsonl"), "a", buffering=1)
        from atomskill_jax.data.tf_setup import tf

        self._tf = tf
        from tensorflow.core.framework import summary_pb2

        self._scalar_metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
        self._tb = tf.summary.create_file_writer(os.path.join(directory, "tensorboard"))
        if wandb_config is not None and wandb_config.get("enabled", False):
            try:
                import wandb
            except ImportError as err:
                raise RuntimeError("config.wandb.enabled=True but wandb is not installed; "
                                   "pip install wandb or set config.wandb.enabled=False") from err
            self._wandb = wandb.init(project=wandb_config.get("project", "atomskill"),
                                     name=wandb_config.get("name") or None,
                                     config=dict(run_config or {}), resume="allow")
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, desc=desc,
                             dynamic_ncols=True, file=sys.stderr, smoothing=0.1)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        record = {"step": int(step), "time": time.time(),
                  **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        with self._tb.as_default(step=int(step)):
            for key, value in clean.items():
                # tf.summary.scalar lives in the tensorboard package (not installed);
                # the core op with the scalars plugin's metadata writes the same record.
                self._tf.summary.write(key, self._tf.constant(value, self._tf.float32),
                                       metadata=self._scalar_metadata)
        self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(clean, step=int(step))
        if self._bar is not None:
            shown = {k: clean[k] for k in ("loss", "action_l1", "perplexity") if k in clean}
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        self._jsonl.close()
        self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
