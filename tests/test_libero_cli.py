"""`atomskill build-data libero_hdf5 --files=...` (the CLI wiring of the LIBERO builder),
on HDF5 files written in the robomimic layout by tests/test_libero_builder.py's helpers."""

from __future__ import annotations

import numpy as np

from atomskill_jax import cli
from tests.test_libero_builder import _demo, _write


def test_build_data_libero_hdf5_from_the_command_line(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    _write(src / "KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5",
           "KITCHEN_SCENE3_turn_on_the_stove", [_demo(rng, 30), _demo(rng, 30)])
    out = tmp_path / "out"
    code = cli.main(["build-data", "libero_hdf5", f"--files={src}", f"--out={out}",
                     "--cameras=agentview", "--image-size=8"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "dataset:" in text and "libero" in text

    from atomskill_jax.data import sources

    dataset_dir = text.split("dataset:")[1].split()[0]
    source = sources.open_source(dataset_dir)
    assert source.cameras == ("agentview",) and source.num_episodes() == 2


def test_build_data_libero_hdf5_needs_files(tmp_path, capsys):
    assert cli.main(["build-data", "libero_hdf5", f"--out={tmp_path}"]) == 2
    assert "give --files=" in capsys.readouterr().err
