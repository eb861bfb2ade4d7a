"""The default data config, embedded by the method configs as `config.data`.

Shared sizes (`horizon`, `skill_resample_length`) are FieldReferences so a method
config can tie its model sizes to them: `model.horizon = data.get_ref('horizon')`.
"""

from __future__ import annotations

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Each entry: name (resolved under `data_dir`, e.g. "metaworld_scripted/mt10", newest
    # version) or a path to a dataset's version directory; weight: relative sampling rate.
    c.datasets = ({"name": "metaworld_scripted", "weight": 1.0},)
    c.data_dir = ""  # root for names; "" -> $ATOMSKILL_DATA_DIR, then ~/tensorflow_datasets
    c.split = "train"
    # A stage's checkpoints directory (e.g. a pre-training run's): normalise with the
    # statistics saved there, not this data's own ("" = own).
    c.statistics_from = ""

    c.action_space = "action"  # "action" (e.g. deltas) or "action_abs" (absolute targets)
    c.horizon = ml_collections.FieldReference(32)  # H: action chunk length
    c.skill_resample_length = ml_collections.FieldReference(64)  # L: resampled skill length

    c.use_state = True  # add observation/state (needs every dataset to have it)
    c.cameras = ()  # e.g. ("corner", "gripper"): image_<camera> must exist in every dataset
    c.image_size = (128, 128)  # (height, width) after resizing
    c.augment = True  # random resized crop + colour jitter when training
    c.augment_kwargs = ml_collections.ConfigDict({
        "crop_scale": (0.8, 1.0),  # area fraction of the random crop
        "crop_ratio": (0.9, 1.1),  # aspect ratio range of the random crop
        "brightness": 0.1,
        "contrast": (0.9, 1.1),
        "saturation": (0.9, 1.1),
        "hue": 0.02,
    })

    # Shuffling: whole episodes first (decorrelates files), then single time steps.
    # Both buffers are part of a saved iterator state, so they set its size on disk;
    # with cameras a buffered episode holds all its encoded frames (~MBs each).
    c.episode_shuffle_buffer = 8
    c.example_shuffle_buffer = 5000
    c.batch_size = 64  # global: split over processes, then over the mesh
    # Data shards: the episodes are cut into this many parts, each with its own pipeline
    # and batches of batch_size / shards; a process reads shards / processes of them
    # (pipeline.shard_layout). 0: one per process. Fixed (a multiple of every process
    # count to be used), the batches and a resumed data position are the same on any
    # process count; 0 ties them to the process count the run started with.
    c.shards = 0
    c.seed = 0
    c.num_parallel_calls = -1  # -1: tf.data.AUTOTUNE
    c.prefetch = 2  # batches

    c.normalization = ml_collections.ConfigDict({
        # "mean_std": (x - mean) / std; "bounds": 1st/99th percentiles to [-1, 1]
        # (clipped); "min_max": min/max to [-1, 1]; "none".
        "mode": "mean_std",
        # Per-statistics-field boolean lists; False leaves that dimension as is, e.g.
        # {"action": (True, True, True, False)} for a binary gripper command.
        "mask": ml_collections.ConfigDict(),
    })
    return c
