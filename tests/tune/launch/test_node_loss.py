"""The driver's watch for lost nodes: where a trial runs, and whether a node's raylet is gone.

The whole path (a node killed mid-trial, the table's line, ``boxtune status``) runs on a real
two-node cluster in ``test_cluster.py``; these check its parts without one.
"""

from __future__ import annotations

import socket

from tune.launch.node_loss import NodeWatch, _raylet_refuses, short_id
from tune.launch.trial_record import TrialRecord
from tune.run.folder import RunFolder

NODE = "03c211b869e8d7b0f4cff445facdb12fc6e16fa2ee24c666dc9c6b7f"
OTHER = "451345aa0b9e0e5d0b0f4cff445facdb12fc6e16fa2ee24c666dc9c6b"


def test_a_raylet_that_refuses_connections_is_gone_and_one_that_listens_is_not():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert not _raylet_refuses({"NodeManagerAddress": "127.0.0.1", "NodeManagerPort": port})
    # closed now: nothing listens there any more, as after a raylet's SIGKILL
    assert _raylet_refuses({"NodeManagerAddress": "127.0.0.1", "NodeManagerPort": port})
    assert not _raylet_refuses({"NodeManagerAddress": "", "NodeManagerPort": 0})  # unknown: not proof


def test_a_trials_node_is_its_latest_result_s_else_the_node_its_attempt_started_on(tmp_path):
    run = tmp_path / "run"
    TrialRecord(str(run), "trial_t1").start(node_id=NODE, checkpoint=None, refused=None)
    watch = NodeWatch(RunFolder.at(str(run)))
    assert watch.node_of("t1") is None  # not started in this fit
    watch.started("t1", "trial_t1")
    assert watch.node_of("t1") == (NODE, "")  # lost before its first epoch: the attempt record says where
    watch.note("t1", OTHER, "10.0.0.8")
    assert watch.node_of("t1") == (OTHER, "10.0.0.8")
    watch.started("t1", "trial_t1")  # its retry starts: the result's node is history until it reports
    assert watch.node_of("t1") == (NODE, "")
    watch.forget("t1")
    assert watch.node_of("t1") is None


def test_node_ids_are_shown_by_their_first_six_digits():
    assert short_id(NODE) == "03c211"
