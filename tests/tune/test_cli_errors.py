"""User errors on the command line: one line naming the option, key or file, exit status 2, no traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TINY_MODEL

from tune.cli import main
from tune.config import SweepConfig, TrainConfig, load_config


def _one_line_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("boxtune: error: ")
    return err.removeprefix("boxtune: error: ")


def _missing_cuda_device() -> str:
    # no CUDA here: plain `cuda`; on a GPU machine, an index past the last device
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


@pytest.mark.parametrize("command", ["train", "predict"])
def test_cuda_device_that_is_not_there(capsys, tmp_path, command):
    device = _missing_cuda_device()
    # paths that pass the checks made before torch loads: the device is the one thing wrong
    (tmp_path / "train.yaml").write_text(f"data: {{path: {tmp_path}}}\n")
    (tmp_path / "best.pt").write_bytes(b"")
    (tmp_path / "a.jpg").write_bytes(b"")
    argv = {"train": ["train", str(tmp_path / "train.yaml"), "--out", str(tmp_path / "out")],
            "predict": ["predict", str(tmp_path / "best.pt"), str(tmp_path), "--out", str(tmp_path / "p.json")]}[command]
    message = _one_line_error(capsys, [*argv, "--device", device])
    if torch.cuda.is_available():
        assert message.startswith(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device")
    else:
        assert message.startswith("--device cuda: torch sees no CUDA device on this machine") and "--device cpu" in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "p.json").exists()  # checked before any work


def test_device_that_torch_does_not_know(capsys, tmp_path):
    (tmp_path / "train.yaml").write_text(f"data: {{path: {tmp_path}}}\n")
    message = _one_line_error(capsys, ["train", str(tmp_path / "train.yaml"), "--out", str(tmp_path), "--device", "gpu0"])
    assert message == "--device 'gpu0': not a torch device; use cpu, cuda or cuda:N"


# --- resume: the run folder's own sweep.yaml, edited by hand or damaged --------------------------


def _run_folder(tmp_path: Path, text: str) -> Path:
    run = tmp_path / "runs" / "edited"
    run.mkdir(parents=True)
    (run / "sweep.yaml").write_text(text)
    return run


def _valid_sweep(tmp_path: Path) -> dict:
    return {"name": "edited", "data": {"path": str(tmp_path / "data.json")}, "storage": str(tmp_path / "runs")}


@pytest.mark.parametrize("case, edit, expected", [
    ("yaml", lambda d: "name: edited\nsearch: {num_trials: [8\n", "not valid YAML: "),
    ("not a mapping", lambda d: "- name\n- edited\n", "expected a mapping of sections at the top level, got list"),
    ("typo", lambda d: yaml.safe_dump({**d, "serch": {"num_trials": 8}}),
     "1 problem: serch: unknown key (did you mean 'search'?)"),
    ("bad value", lambda d: yaml.safe_dump({**d, "search": {"num_trials": -3}}), "1 problem: search.num_trials: "),
    ("binary", None, "not a text file"),
])
def test_resume_with_edited_or_corrupt_sweep_yaml(capsys, tmp_path, case, edit, expected):
    if edit is None:
        run = _run_folder(tmp_path, "")
        (run / "sweep.yaml").write_bytes(b"\x80\xff\x00 not text")
    else:
        run = _run_folder(tmp_path, edit(_valid_sweep(tmp_path)))
    message = _one_line_error(capsys, ["resume", str(run)])
    assert message.startswith(f"{run}/sweep.yaml: {expected}"), message


# --- ~ in config paths --------------------------------------------------------------------------


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", ["off", "no", "123"])
def test_a_name_that_yaml_reads_as_another_type_stays_a_name(capsys, tmp_path, tiny_demo, name):
    # the run folder exists already, so the sweep stops at its name, before Ray: the name it used shows
    (tmp_path / "runs" / name).mkdir(parents=True)
    (tmp_path / "runs" / name / "sweep.yaml").write_text("name: x\n")
    config = _write(tmp_path / "sweep.yaml", {"data": {"path": str(tiny_demo)}, "storage": str(tmp_path / "runs")})
    assert _one_line_error(capsys, ["sweep", str(config), "--name", name]) == (
        f"name: a sweep {name!r} already exists in {tmp_path / 'runs' / name}; run `boxtune resume "
        f"{tmp_path / 'runs' / name}` or choose another name")


def test_tilde_in_config_paths_is_the_home_folder(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    config = tmp_path / "configs"
    config.mkdir()
    cfg = load_config(_write(config / "sweep.yaml", {
        "data": {"path": "~/data/annotations.json", "images_dir": "~/data/images", "val_path": "~/val.json"},
        "model": {"weights": "~/weights/coco.pth"},
        "storage": "~/boxtune_runs",
    }), SweepConfig)
    assert cfg.data.path == str(home / "data" / "annotations.json")
    assert cfg.data.images_dir == str(home / "data" / "images") and cfg.data.val_path == str(home / "val.json")
    assert cfg.model.weights == str(home / "weights" / "coco.pth")
    assert cfg.storage == str(home / "boxtune_runs")


@pytest.mark.parametrize("value, expected", [
    ("relative/a.json", "{config}/relative/a.json"),  # relative to the config file's folder
    ("/abs/a.json", "/abs/a.json"),
    ("s3://bucket/a.json", "s3://bucket/a.json"),
    ("~/a.json", "{home}/a.json"),
])
def test_data_path_forms(tmp_path, monkeypatch, value, expected):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(_write(tmp_path / "train.yaml", {"data": {"path": value}}), TrainConfig)
    assert cfg.data.path == expected.format(config=tmp_path, home=tmp_path / "home")


def test_tilde_and_relative_paths_in_set_overrides(tmp_path, monkeypatch):
    # the shell leaves `--set data.path=~/x` alone; boxtune expands it, and takes relative ones from the cwd
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for folder in ("configs", "work"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "work")
    cfg = load_config(_write(tmp_path / "configs" / "sweep.yaml", {"data": {"path": "in_config.json"}}), SweepConfig,
                      overrides=["data.val_path=~/val.json", "storage=runs", "model.weights=~/w.pth"])
    assert cfg.data.path == str(tmp_path / "configs" / "in_config.json")  # the file's own: from its folder
    assert cfg.data.val_path == str(tmp_path / "home" / "val.json")
    assert cfg.model.weights == str(tmp_path / "home" / "w.pth")
    assert cfg.storage == str(tmp_path / "work" / "runs")


def test_weights_name_is_not_a_path(tmp_path):
    cfg = load_config(_write(tmp_path / "train.yaml", {"data": {"path": "a.json"}, "model": {"weights": "DEFAULT"}}),
                      TrainConfig)
    assert cfg.model.weights == "DEFAULT"


def test_split_keys_beside_a_manifest_are_refused_not_ignored(capsys, tmp_path, tiny_manifest):
    config = _write(tmp_path / "train.yaml", {"data": {"path": str(tiny_manifest), "seed": 3}, "model": TINY_MODEL,
                                               "training": {"epochs": 1}})
    argv = ["train", str(config), "--out", str(tmp_path / "out"), "--set", "data.val_fraction=0.5",
            "--set", "data.test_fraction=0.1"]
    assert _one_line_error(capsys, argv) == (
        f"data.test_fraction, data.val_fraction: data.path {tiny_manifest} is a manifest, whose records and split "
        "are fixed, so these keys do nothing; remove them, or set data.path to the dataset itself")
    assert not (tmp_path / "out").exists()
    # a full dump (as a run's sweep.yaml is) sets every key, each at its default: nothing to refuse
    from tune.launch.data_source import prepare_manifest

    dump = _write(tmp_path / "dump.yaml", SweepConfig.model_validate({"data": {"path": str(tiny_manifest)}}).model_dump(mode="json"))
    assert len(prepare_manifest(load_config(dump, SweepConfig)).records()) == 24


# --- joining a cluster that refuses ------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_yaml(tmp_path_factory) -> Path:
    """A sweep whose dataset does not exist: the address is checked first, so that error never comes."""
    work = tmp_path_factory.mktemp("join")
    return _write(work / "sweep.yaml", {
        "name": "join", "data": {"path": str(work / "no_such_dataset.json")}, "model": TINY_MODEL,
        "training": {"epochs": 1}, "search": {"space": "quick", "num_trials": 1, "sampler": "random"},
        "scheduler": {"name": "fifo"}, "storage": str(work / "runs"),
    })


def _sweep_cli(sweep_yaml: Path, address: str) -> subprocess.CompletedProcess:
    """``boxtune sweep --address`` as its own process: the test process may hold a local Ray already."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    return subprocess.run([sys.executable, "-m", "tune.cli", "sweep", str(sweep_yaml), "--address", address],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def _refusal(out: subprocess.CompletedProcess, address: str) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"boxtune: error: --address {address}: "), out.stderr
    return last.removeprefix(f"boxtune: error: --address {address}: ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_join_where_nothing_listens(sweep_yaml):
    address = f"127.0.0.1:{_free_port()}"
    out = _sweep_cli(sweep_yaml, address)
    message = _refusal(out, address)
    # the whole output, and no word of tokens: the cause is the address
    assert out.stdout + out.stderr == f"boxtune: error: --address {address}: {message}\n"
    assert message == ("nothing accepts connections there (Connection refused). "
                       "Check the host and port (`ray status` on the head node shows the address).")
    assert not (sweep_yaml.parent / "runs" / "join").exists()


def test_join_a_port_that_is_not_ray(sweep_yaml):
    """An HTTP/1 server on the port (a dashboard, a web app): refused in seconds, not after Ray's retries."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    try:
        message = _refusal(_sweep_cli(sweep_yaml, address), address)
    finally:
        server.close()
    assert message.startswith("something listens there, but not a Ray cluster's GCS (no gRPC answer within 5 s)")


@pytest.mark.parametrize("address", ["127.0.0.1", ":6379"])
def test_join_address_without_host_and_port(sweep_yaml, address):
    message = _refusal(_sweep_cli(sweep_yaml, address), address)
    assert message == "expected host:port (the head's GCS port, 6379 by default), or auto on a node of the cluster"


@pytest.mark.parametrize("address", ["ray://127.0.0.1:10001", "ray://head.example:10001"])
def test_join_through_ray_client_is_refused_in_one_line(sweep_yaml, address):
    """Through Ray Client, Tune runs the sweep in an actor on the head and every output line comes
    back prefixed; the refusal names the address to use instead, before anything connects."""
    out = _sweep_cli(sweep_yaml, address)
    message = _refusal(out, address)
    assert out.stdout + out.stderr == f"boxtune: error: --address {address}: {message}\n"
    assert message == ("Ray Client (ray://) addresses are not supported: join the head's GCS port instead, "
                       "--address HEAD_IP:6379 (or auto on a node of the cluster)")


@pytest.mark.parametrize("command", ["sweep", "resume", "demo"])
def test_address_help_gives_the_documented_form(command):
    """One form in the help, README and docs/cluster.md: HEAD_IP:6379, and auto on a node of the cluster."""
    from tune.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices[command]
    (action,) = [a for a in sub._actions if "--address" in a.option_strings]
    assert action.help.startswith("join a Ray cluster: HEAD_IP:6379 (the head's GCS port), or auto on a node of the "
                                  "cluster; clients need RAY_AUTH_MODE=token")
    assert "ray://" not in action.help
    docs = (REPO / "README.md").read_text() + (REPO / "docs" / "cluster.md").read_text()
    assert "--address HEAD_IP:6379" in (REPO / "README.md").read_text()
    assert "--address auto" in docs and "ray://host" not in docs


def test_data_summary_hints_name_its_flags_not_config_keys(capsys, tmp_path):
    # a COCO JSON and VOC XML in one folder; then a COCO JSON whose images are elsewhere
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "a.jpg")
    (tmp_path / "a.xml").write_text("<annotation><filename>a.jpg</filename><object><name>dog</name><bndbox>"
                                    "<xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    coco = {"images": [{"id": i, "file_name": f"x{i}.jpg"} for i in (1, 2)], "annotations": [],
            "categories": [{"id": 1, "name": "dog"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert _one_line_error(capsys, ["data", "summary", str(tmp_path)]) == (
        f"{tmp_path}: holds more than one kind of annotations (COCO JSON: coco.json; VOC XML folders: .); set --format")
    assert main(["data", "summary", str(tmp_path), "--format", "coco"]) == 2  # a problem list: two lines
    message = capsys.readouterr().err
    assert message.endswith("; set --images-dir to the folder that holds them\n")
    assert "data." not in message and "Traceback" not in message
