"""Run folders written before ``tune/`` had its wings still resume: their ``tuner.pkl`` pickles
boxtune's callbacks by the old module paths, and ``Tuner.restore`` unpickles them."""

from __future__ import annotations

import pickle

import pytest

from tune.launch.progress import ProgressTable
from tune.launch.retention import CheckpointRetention
from tune.run.storage import RunStorage

# (the path a pickle from an older run names, the path the class lives at now)
MOVED = [("tune.progress", "tune.launch.progress", "ProgressTable"),
         ("tune.retention", "tune.launch.retention", "CheckpointRetention"),
         ("tune.storage", "tune.run.storage", "RunStorage")]


def _as_old_pickle(obj) -> bytes:
    """``obj`` pickled (protocol 0, whose GLOBAL opcode spells module and name as text lines) as an
    older boxtune, with its classes at the old paths, wrote it."""
    data = pickle.dumps(obj, protocol=0)
    for old, new, name in MOVED:
        data = data.replace(f"c{new}\n{name}\n".encode(), f"c{old}\n{name}\n".encode())
    return data


@pytest.mark.parametrize(("old", "new", "name"), MOVED)
def test_old_paths_name_the_same_classes(old, new, name):
    import importlib

    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


def test_callbacks_pickled_at_the_old_paths_load(tmp_path):
    table = ProgressTable(max_epochs=3, by_score=True)
    retention = CheckpointRetention(RunStorage(str(tmp_path), "run"), keep_trials=2)
    data = _as_old_pickle([table, retention])
    for old, new, name in MOVED:
        assert f"c{old}\n{name}\n".encode() in data and f"c{new}\n".encode() not in data
    loaded_table, loaded_retention = pickle.loads(data)
    assert type(loaded_table) is ProgressTable and loaded_table.max_epochs == 3 and loaded_table._by_score
    assert type(loaded_retention) is CheckpointRetention and loaded_retention.keep_trials == 2
    assert type(loaded_retention.storage) is RunStorage and loaded_retention.storage.uri == f"{tmp_path}/run"
