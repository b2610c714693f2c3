"""Several Ray nodes: the launcher config, image URIs, and real two-node clusters on one machine.

The ``cluster`` tests start their nodes inside a private network namespace (``unshare -rn``, see
``cluster_scenarios.py``): every Ray port is on a loopback nobody else shares, and the nodes
share this machine's filesystem, which stands in for a cluster's shared storage. Where user
namespaces are not permitted those tests skip with the reason; under ``CI=true``, where they must
run, they fail instead.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from cluster_scenarios import (
    FAKE_CARD_MIB,
    SECOND_NODE,
    NamespaceUnavailable,
    hand_start_recipe,
    run_scenario,
)
from conftest import REPO, TINY_MODEL

from trainables.checkpoint import CHECKPOINT_FILE, load_checkpoint
from trainables.data import DetectionDataset, Manifest, build_manifest, load_image, read_manifest
from trainables.errors import DataError
from trainables.gpu_memory import fit_table

CLUSTER_YAML = REPO / "cluster.yaml"
# the memory preflight's inputs: a measured-table stand-in (base 2000 MiB, 3000 MiB per image megapixel) and one config
MEMORY_TABLE = fit_table([{"arch": "fasterrcnn_mobilenet_v3_large_320_fpn", "precision": "amp", "batch": b,
                           "megapixels": 0.2048, "reserved_mib": 2000 + 3000 * b * 0.2048, "trainable_params": 1}
                          for b in (2, 8)], card="test card", context_mib=400, versions={})
MEMORY_TABLE_NONE_FITS = fit_table([{"arch": "fasterrcnn_mobilenet_v3_large_320_fpn", "precision": "amp", "batch": b,
                                     "megapixels": 0.2048, "reserved_mib": 30000 + 3000 * b * 0.2048,
                                     "trainable_params": 1} for b in (2, 8)],
                                   card="test card", context_mib=400, versions={})
MEMORY_CONFIG = {"model": {"architecture": "fasterrcnn_mobilenet_v3_large_320_fpn"}, "hparams": {"batch_size": 2}}
EPOCHS = 2
# (cpu, gpu) per trial -> None if the preflight accepts it, else the start of its message.
# The cluster: a head with no CPU and no GPU (as in cluster.yaml), a second node with 1 CPU and
# 1 (fake) GPU, a third with 1 CPU.
PREFLIGHT = {
    (1, 1): None,
    (1, 0.5): None,
    (1, 0): None,
    (1, 2): "resources.gpu: each trial asks for 2 GPU, but no node of the Ray cluster has that many",
    (2, 1): "resources.cpu: each trial asks for 2 CPUs and 1 GPU, but no single node has that",
}


# --- cluster.yaml -------------------------------------------------------------------------------


def _launcher_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _validate(config: dict) -> dict:
    """Ray's own checks, as `ray up` runs them: the JSON schema, then defaults filled in, then again."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(config)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_ray_validation():
    prepared = _validate(_launcher_config())
    assert prepared["provider"]["type"] == "aws"
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


def test_cluster_yaml_head_runs_no_trials_and_gpu_workers_scale():
    cfg = _launcher_config()
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    (worker,) = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert worker["node_config"]["InstanceType"].split(".")[0] in ("g5", "g6")
    assert worker["resources"]["GPU"] >= 1
    assert 0 <= worker["min_workers"] < worker["max_workers"] <= cfg["max_workers"]


def test_cluster_yaml_installs_boxtune_and_exposes_only_ssh():
    cfg = _launcher_config()
    assert cfg["file_mounts"]["/home/ubuntu/boxtune"] == "."
    # the cluster extra: the head's job server and dashboard, for `ray job submit`
    assert any('"$HOME/boxtune[cluster]"' in cmd and cmd.startswith("pip install") for cmd in cfg["setup_commands"])
    assert any("mount" in cmd and "/mnt/efs" in cmd for cmd in cfg["setup_commands"])
    # Ray adds only the node-to-node and SSH rules to its group; no extra ingress here
    assert cfg["provider"]["security_group"]["IpPermissions"] == []
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token ray start --head" in head_start
    assert "RAY_AUTH_MODE=token ray start --address" in " ".join(cfg["worker_start_ray_commands"])
    assert cfg["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"


@pytest.mark.parametrize(
    "path, misspelled",
    [
        (("setup_commands",), "setup_comands"),
        (("available_node_types", "gpu_worker", "min_workers"), "min_worker"),
        (("available_node_types", "head", "resources"), "resource"),
        (("provider", "security_group", "IpPermissions"), "IpPermission"),
        (("head_start_ray_commands",), "head_start_commands"),
    ],
)
def test_misspelled_key_fails_ray_validation(path, misspelled):
    import jsonschema

    cfg = _launcher_config()
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[misspelled] = node.pop(path[-1])
    with pytest.raises(jsonschema.ValidationError) as err:
        _validate(cfg)
    assert repr(misspelled) in err.value.message or "'resources' is a required property" in err.value.message


# --- the hand-run recipe (docs/cluster.md) ------------------------------------------------------


def test_hand_run_recipe_starts_a_token_cluster_with_a_cpu_less_head_and_joins_it_by_gcs_address():
    lines = [" ".join(argv) for argv in hand_start_recipe()]
    assert lines[0] == "ray get-auth-token --generate"
    (head,) = [line for line in lines if line.startswith("ray start --head")]
    assert "--port 6379" in head and "--num-cpus 0" in head and "--dashboard-host 127.0.0.1" in head
    (worker,) = [line for line in lines if line.startswith("ray start --address")]
    assert worker.startswith("ray start --address HEAD_IP:6379")
    # each node's token mode is set before its `ray start`
    assert lines.index("export RAY_AUTH_MODE=token") < lines.index(head)
    assert "export RAY_AUTH_MODE=token" in lines[lines.index(head) + 1:lines.index(worker)]
    assert lines[-1] == "boxtune sweep sweep.yaml --address HEAD_IP:6379"


# --- images behind a URI ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uri_manifest(tiny_demo, tmp_path_factory) -> Path:
    """The tiny demo's manifest with every image path rewritten as a file:// URI (as s3:// would be)."""
    manifest = build_manifest(tiny_demo, val_fraction=0.25, seed=0)
    table = manifest.table
    uris = pa.array([Path(p).as_uri() for p in table.column("path").to_pylist()], pa.string())
    table = table.set_column(table.schema.get_field_index("path"), table.schema.field("path"), uris)
    return Manifest(table).write(tmp_path_factory.mktemp("uri_manifest") / "manifest.parquet")


def test_dataset_reads_images_through_file_uri(uri_manifest, tiny_manifest):
    by_uri, local = read_manifest(uri_manifest).records("train"), read_manifest(tiny_manifest).records("train")
    assert by_uri[0].path.startswith("file:///") and by_uri[0].path == Path(local[0].path).as_uri()
    for index in (0, len(local) - 1):
        image, target = DetectionDataset(by_uri)[index]
        expected_image, expected_target = DetectionDataset(local)[index]
        assert image.shape == (3, 96, 96) and torch.equal(image, expected_image)
        assert torch.equal(target["boxes"], expected_target["boxes"]) and target["image_id"] == expected_target["image_id"]


@pytest.mark.parametrize("uri", ["file:///nonexistent/boxtune/img_0001.jpg", "nosuchscheme://bucket/img_0001.jpg"])
def test_unreadable_image_uri_names_file_and_record(uri_manifest, uri):
    record = read_manifest(uri_manifest).records("val")[0]
    moved = type(record)(**{**record.__dict__, "path": uri})
    with pytest.raises(DataError, match=rf"^{uri}: image id {record.image_id}: cannot read the image"):
        load_image(moved)


# --- real clusters ------------------------------------------------------------------------------


def _write_sweep(work: Path, **cfg) -> None:
    base = {
        "model": TINY_MODEL,
        "training": {"epochs": EPOCHS, "seed": 0},
        "search": {"space": "quick", "num_trials": 2, "sampler": "random", "seed": 1},
        "scheduler": {"name": "fifo"},
        "resources": {"cpu": 1},
        "max_concurrent": 2,
        "storage": str(work / "runs"),
    }
    (work / "sweep.yaml").write_text(yaml.safe_dump({**base, **cfg}))


def _scenario(name: str, work: Path) -> dict:
    try:
        return run_scenario(name, work, timeout_s=420)
    except NamespaceUnavailable as err:
        reason = f"multi-node tests need a private network namespace: {err}"
        if os.environ.get("CI") == "true":  # CI must run them: not being able to is a failure there
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def _trial_results(run: Path) -> dict[str, list[dict]]:
    """trial id -> its result rows, read from the sweep's storage."""
    out = {}
    for path in sorted(run.glob("*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[rows[0]["trial_id"]] = rows
    return out


def _trial_dir(run: Path, trial_id: str) -> Path:
    (folder,) = [p.parent for p in run.glob(f"*_{trial_id}_*/result.json")]
    return folder


TWO_NODE_TRIALS = 3  # two at once, one per worker, then one more in a reused worker process


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, uri_manifest):
    """`boxtune sweep --address` against a CPU-less head and two `ray start` workers. The manifest holds
    only file:// URIs, so a trial that finishes has read its images through pyarrow's filesystems."""
    work = tmp_path_factory.mktemp("two_nodes")
    _write_sweep(work, name="two", data={"path": str(uri_manifest)}, retries=0,
                 search={"space": "quick", "num_trials": TWO_NODE_TRIALS, "sampler": "random", "seed": 1})
    (work / "params.json").write_text(json.dumps({"preflight": [list(case) for case in PREFLIGHT],
                                                  "gpu_memory_table": MEMORY_TABLE, "gpu_memory_shares": [0.5, 0.1],
                                                  "gpu_memory_configs": [MEMORY_CONFIG],
                                                  "gpu_memory_table_none_fits": MEMORY_TABLE_NONE_FITS}))
    return _scenario("ray_start", work), work / "runs" / "two"


@pytest.mark.cluster
def test_sweep_through_address_runs_trials_on_both_workers_never_the_head(two_nodes):
    seen, run = two_nodes
    assert seen["sweep_rc"] == 0, seen["sweep_output"]
    nodes = {n["node_id"]: n for n in seen["nodes"]}
    (head,) = [i for i, n in nodes.items() if n["head"]]
    assert len(nodes) == 3 and nodes[head]["resources"].get("CPU", 0) == 0
    (second,) = [i for i, n in nodes.items() if n["resources"].get(SECOND_NODE) == 1]
    assert nodes[second]["resources"]["GPU"] == 1 and nodes[second]["resources"]["CPU"] == 1
    results = _trial_results(run)
    assert len(results) == TWO_NODE_TRIALS
    ran_on = {row["node_id"] for rows in results.values() for row in rows}
    assert ran_on == set(nodes) - {head}  # two concurrent 1-CPU trials, one per worker; none on the head
    # a trial stays on its node when nothing fails
    assert all(len({row["node_id"] for row in rows}) == 1 for rows in results.values())
    assert json.loads((run / "boxtune.json").read_text())["ray_address"] == "127.0.0.1:6379"


@pytest.mark.cluster
def test_every_trial_result_and_checkpoint_is_in_sweep_storage(two_nodes):
    _, run = two_nodes
    ranking = pq.read_table(run / "ranking.parquet").to_pylist()
    assert [r["status"] for r in ranking] == ["TERMINATED"] * TWO_NODE_TRIALS
    results = _trial_results(run)
    assert set(results) == {r["trial"] for r in ranking}
    for trial_id, rows in results.items():
        assert [row["epoch"] for row in rows] == list(range(1, EPOCHS + 1))
        checkpoints = sorted(_trial_dir(run, trial_id).glob(f"checkpoint_*/{CHECKPOINT_FILE}"))
        assert checkpoints, f"trial {trial_id} has no checkpoint in {run}"
        for path in checkpoints:
            state = load_checkpoint(path.parent)
            epoch = int(path.parent.name.removeprefix("checkpoint_")) + 1  # Tune counts reports from 0
            assert state.epoch == epoch and state.metrics["AP"] == pytest.approx(rows[epoch - 1]["AP"], nan_ok=True)


@pytest.mark.cluster
@pytest.mark.parametrize("cpu, gpu", list(PREFLIGHT), ids=[f"cpu{c}-gpu{g}" for c, g in PREFLIGHT])
def test_preflight_against_real_nodes(two_nodes, cpu, gpu):
    seen, _ = two_nodes
    (case,) = [c for c in seen["preflight"] if (c["cpu"], c["gpu"]) == (cpu, gpu)]
    expected = PREFLIGHT[(cpu, gpu)]
    if expected is None:
        assert case["error"] is None
    else:
        assert case["error"] is not None and case["error"].startswith(expected), case["error"]
        # the message lists what the nodes advertise, the fake GPU included (in Ray's node order)
        assert sorted(case["error"].split("(nodes: ")[1].split(")")[0].split(", ")) == [
            "0 CPU/0 GPU", "1 CPU/0 GPU", "1 CPU/1 GPU"]


@pytest.mark.cluster
def test_card_memory_is_read_on_the_gpu_node_only(two_nodes):
    # a zero-resource task on the GPU node ran its (stand-in) nvidia-smi and brought the card's memory back;
    # the other nodes' stand-ins (NOT_A_GPU_NODE_MIB) were not asked
    seen, _ = two_nodes
    assert seen["card_memory"] == {"1": [float(FAKE_CARD_MIB)], "0.5": [float(FAKE_CARD_MIB)]}


@pytest.mark.cluster
def test_memory_preflight_checks_configs_against_the_gpu_nodes_card(two_nodes):
    seen, _ = two_nodes
    # MobileNet-320 at 320x640, batch 2, no image sizes given (so the 640x640 canvas a batch of both
    # orientations can reach): 2000 + 3000 * 2 * 0.4096 = 4458 MiB, against a share of the stand-in
    # 24564 MiB card less the 400 MiB context
    half, tenth = seen["memory_preflight"]["0.5"], seen["memory_preflight"]["0.1"]
    assert half == {"error": None, "lines": [
        "GPU memory: about 4458 to 4458 MiB per trial, within its 11882 MiB (resources.gpu 0.5 of a 24564 MiB card, "
        "less 400 MiB for the CUDA context; estimates measured on test card)"]}
    assert tenth["error"].startswith("resources.gpu: a trial may hold 2056 MiB (resources.gpu 0.1 of a 24564 MiB card")
    assert "needs about 4458 MiB" in tenth["error"]


@pytest.mark.cluster
def test_gpu_sweep_no_config_of_which_fits_is_refused_before_any_trial(two_nodes):
    seen, run = two_nodes
    output = seen["gpu_refused_output"]
    assert seen["gpu_refused_rc"] == 2 and "Traceback" not in output, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("boxtune: error: resources.gpu: a trial may hold 24164 MiB (resources.gpu 1 of a 24564 MiB "
                           "card, less 400 MiB for the CUDA context; estimates measured on test card)"), last
    assert "fasterrcnn_mobilenet_v3_large_320_fpn, batch_size 4, 96x96, amp" in last
    assert "Use GPUs with more memory, or lower the space's batch_size or model.max_size" in last  # a whole card already
    assert not (run.parent / "gpu_refused").exists()  # nothing written: the check runs before the run folder


# a refused client: exit status 2, and its whole output one line, in seconds (Ray's own retries took 27 to 35 s)
REFUSED_WITHIN_S = 15
COPY_TOKEN = "copy the head's ~/.ray/auth_token to this machine's ~/.ray/auth_token (or to a file named by RAY_AUTH_TOKEN_PATH)"
TOKENLESS = ("boxtune: error: --address 127.0.0.1:6379: the cluster uses token authentication, and this client sends no "
             "token (RAY_AUTH_MODE is {mode}; Ray sends one only with RAY_AUTH_MODE=token). ")


def _refused(seen: dict, case: str) -> str:
    output = seen[f"{case}_output"]
    assert seen[f"{case}_rc"] == 2, output
    assert len(output.strip().splitlines()) == 1, output  # nothing of Ray's around it
    assert seen[f"{case}_s"] < REFUSED_WITHIN_S, (seen[f"{case}_s"], output)
    return output.strip()


@pytest.mark.cluster
def test_client_without_token_is_refused_in_one_line_with_the_fix(two_nodes):
    seen, run = two_nodes
    # no token anywhere, and token mode off
    assert _refused(seen, "tokenless") == TOKENLESS.format(mode="'disabled'") + f"Set RAY_AUTH_MODE=token and {COPY_TOKEN}"
    assert not (run.parent / "tokenless").exists()


@pytest.mark.cluster
def test_client_with_the_token_but_no_token_mode_is_told_to_set_it(two_nodes):
    seen, run = two_nodes
    line = _refused(seen, "unset_mode")
    assert line.startswith(TOKENLESS.format(mode="not set") + "Set RAY_AUTH_MODE=token (Ray then sends the token in "
                                                                "RAY_AUTH_TOKEN_PATH=/"), line
    assert line.endswith("/auth_token)"), line
    assert not (run.parent / "unset_mode").exists()


@pytest.mark.cluster
def test_client_with_another_clusters_token_is_refused_in_one_line(two_nodes):
    seen, run = two_nodes
    line = _refused(seen, "wrong_token")
    assert line.startswith("boxtune: error: --address 127.0.0.1:6379: the cluster refuses this client's token "
                           "(from RAY_AUTH_TOKEN_PATH=/"), line
    assert line.endswith(f"/other_auth_token): it is not the cluster's. To join it, {COPY_TOKEN}"), line
    assert not (run.parent / "wrong_token").exists()


@pytest.mark.cluster
def test_client_whose_token_file_is_missing_is_refused_in_one_line(two_nodes):
    seen, run = two_nodes
    line = _refused(seen, "missing_token")
    assert line.startswith("boxtune: error: --address 127.0.0.1:6379: RAY_AUTH_MODE=token, but there is no token in "
                           "RAY_AUTH_TOKEN_PATH=/"), line
    assert line.endswith(f"/no_such_token (missing, unreadable or empty): {COPY_TOKEN}"), line


@pytest.mark.cluster
def test_ray_client_address_is_refused_in_one_line_naming_the_gcs_address(two_nodes):
    # through Ray Client every line of the sweep's output came back prefixed `(TunerInternal pid=...)`
    seen, run = two_nodes
    assert _refused(seen, "ray_client") == (
        "boxtune: error: --address ray://127.0.0.1:10001: Ray Client (ray://) addresses are not supported: join the "
        "head's GCS port instead, --address HEAD_IP:6379 (or auto on a node of the cluster)")
    assert not (run.parent / "ray_client").exists()


@pytest.mark.cluster
def test_the_cluster_was_started_by_the_docs_recipe_as_written(two_nodes):
    seen, _ = two_nodes
    assert seen["recipe"] == hand_start_recipe()
    assert seen["sweep_cmd"][-2:] == ["--address", "127.0.0.1:6379"]  # the recipe's, HEAD_IP on loopback
    # and the sweep it ends with ran there, without a line of Ray's connection messages
    assert seen["sweep_rc"] == 0, seen["sweep_output"]
    assert "Connecting to existing Ray cluster" not in seen["sweep_output"]


@pytest.mark.cluster
def test_every_trial_tensorboard_events_and_hparams_session_reach_storage(two_nodes):
    """Each trial ran on a worker node whose session folder is not the head's; its events are in the
    run folder all the same, whether its worker process was fresh or reused from an earlier trial."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams import plugin_data_pb2

    seen, run = two_nodes
    results = _trial_results(run)
    # Tune's own `pid` in every result: the third trial ran in a process an earlier trial had used
    assert len({rows[0]["pid"] for rows in results.values()}) == 2, {t: rows[0]["pid"] for t, rows in results.items()}
    for trial_id, rows in results.items():
        folder = _trial_dir(run, trial_id)
        assert list(folder.glob("events.out.tfevents.*")), f"trial {trial_id}: no TensorBoard events in {folder}"
        acc = ea.EventAccumulator(str(folder), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
        acc.Reload()
        assert [e.step for e in acc.Scalars("coco/AP")] == list(range(1, EPOCHS + 1))
        assert [e.value for e in acc.Scalars("coco/AP")] == pytest.approx([row["AP"] for row in rows], nan_ok=True)
        content = acc.PluginTagToContent("hparams")
        assert "_hparams_/session_start_info" in content, f"trial {trial_id}: no HParams session in {folder}"
        session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        assert session.session_start_info.hparams, f"trial {trial_id}: an HParams session without hyperparameters"
        assert not any(tag.startswith("ray/") for tag in acc.Tags()["scalars"])  # only the trial's own writer


@pytest.fixture(scope="module")
def node_loss(tmp_path_factory, tiny_demo):
    """Two 1-CPU nodes; the second is killed once one of its trials has checkpointed epoch 1."""
    work = tmp_path_factory.mktemp("node_loss")
    _write_sweep(work, name="loss", data={"path": str(tiny_demo), "val_fraction": 0.25}, retries=2)
    return _scenario("node_loss", work), work / "runs" / "loss"


@pytest.mark.cluster
def test_node_loss_loses_no_trial(node_loss):
    seen, run = node_loss
    assert seen["sweep_rc"] == 0, seen["sweep_output"]
    assert seen["kill"].get("removed_at"), "the second node was never killed: no trial of it checkpointed"
    assert [(r["status"], r["epochs"], r["error"]) for r in seen["ranking"]] == [("TERMINATED", EPOCHS, None)] * 2
    results = _trial_results(run)
    assert set(results) == {r["trial"] for r in seen["ranking"]}
    for rows in results.values():  # each epoch once: nothing restarted from scratch, nothing skipped
        assert [row["epoch"] for row in rows] == list(range(1, EPOCHS + 1))
        assert rows[-1]["node_id"] == seen["head_node"]  # the second node is gone; every trial ends on the head


@pytest.mark.cluster
def test_lost_trial_continues_from_its_checkpoint_on_the_other_node(node_loss):
    seen, run = node_loss
    killed = seen["kill"]["trial"]
    (trial_id,) = [t for t in _trial_results(run) if f"_{t}_" in killed]
    rows = _trial_results(run)[trial_id]
    first, second = rows
    assert (first["epoch"], first["node_id"], first["iterations_since_restore"]) == (1, seen["second_node"], 1)
    # restored: epoch 2 is the first iteration since the restore, not epoch 1 again
    assert (second["epoch"], second["node_id"], second["iterations_since_restore"]) == (2, seen["head_node"], 1)
    assert second["training_iteration"] == 2
    assert (_trial_dir(run, trial_id) / "error.txt").is_file()  # Tune recorded the failure it retried


def _killed_trial(seen: dict, run: Path) -> str:
    (trial_id,) = [t for t in _trial_results(run) if f"_{t}_" in seen["kill"]["trial"]]
    return trial_id


@pytest.mark.cluster
def test_node_loss_is_one_boxtune_line_not_rays_dump(node_loss):
    seen, run = node_loss
    out = seen["sweep_output"]
    trial_id = _killed_trial(seen, run)
    lines = out.splitlines()
    # the trial, the node (id prefix and IP), and the retry: every report carries a checkpoint, so epoch 1's
    told = f"-- {trial_id} lost its node {seen['second_node'][:6]} (127.0.0.1): retry 1 of 2 from epoch 1's checkpoint"
    assert told in lines, out
    for ray_dump in ("Traceback", "Trial task failed", "errored after", f"Trial sweep_trainable_{trial_id} result",
                     "[state-dump]", "Raylet is terminated", "has been marked dead", "ActorUnavailableError"):
        assert ray_dump not in out, f"{ray_dump!r} reached the terminal:\n{out}"
    # from the table's first row to the last trial's end line, only rows and boxtune's own lines
    first = next(i for i, line in enumerate(lines) if line.startswith("trial ") and "hyperparameters" in line)
    last = max(i for i, line in enumerate(lines) if line.startswith("-- ") and " after epoch " in line)
    others = [line for line in lines[first:last + 1]
              if line.strip() and not line.startswith(("-- ", "trial ")) and "RUNNING" not in line]
    assert len(others) <= 2, others


@pytest.mark.cluster
def test_rays_output_about_the_lost_node_is_in_the_run_folders_log(node_loss):
    seen, run = node_loss
    trial_id = _killed_trial(seen, run)
    log = (run / "ray_output.log").read_text()
    assert f"Trial task failed for trial sweep_trainable_{trial_id}" in log and "Traceback" in log
    assert "ray.exceptions.Actor" in log  # ActorUnavailableError or ActorDiedError: the actor went with its node
    assert f"Trial sweep_trainable_{trial_id} errored after 1 iterations" in log
    assert f"Trial sweep_trainable_{trial_id} result" in log  # Ray's result box


@pytest.mark.cluster
def test_status_shows_the_trial_that_lost_its_node_until_it_reports_again(node_loss):
    seen, run = node_loss
    kill = seen["kill"]
    trial_id = _killed_trial(seen, run)
    assert kill["status_rc"] == 0, kill.get("status_output")
    assert not kill["retried_before_status"], "the retry reported before status ran: nothing left to show"
    # recorded by the driver as soon as it saw the raylet gone: seconds, not the half minute until the
    # retry starts (status runs 10 s after the kill at the latest)
    assert "loss_recorded_s" in kill, kill["status_output"]
    status = kill["status_output"].splitlines()
    assert ", 1 lost its node" in status[1], status
    (lost,) = [line for line in status if "trial lost its node:" in line]
    assert re.fullmatch(rf"  1 trial lost its node: {trial_id} \(node {seen['second_node'][:6]}, 127\.0\.0\.1, "
                        rf"lost \d+ s ago; retry 1 of 2 pending\)", lost), lost
    # once the retry has reported from the head node, and the sweep has ended, status is plain again
    after = subprocess.run([sys.executable, "-m", "tune.cli", "status", str(run)], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
    assert after.returncode == 0 and "lost" not in after.stdout, after.stdout + after.stderr
    assert "  trials: 2 asked, 2 done, 0 running, 0 pending, 0 errored" in after.stdout.splitlines()
