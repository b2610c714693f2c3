"""Exports: the .pt file loads with torchvision alone and predicts what the trained model predicts."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from conftest import calibrate_norms, tiny_sweep
from torch import nn
from torchvision.models import get_model
from torchvision.ops.misc import FrozenBatchNorm2d

import tune.ship.export as export_module
from trainables.checkpoint import TrialState, capture_rng, save_checkpoint
from trainables.config import TrialConfig
from trainables.errors import BoxtuneError
from trainables.freeze import apply_freeze
from trainables.inference import normalize_state_dict
from trainables.model import build_model, model_kwargs
from tune.ship.export import EXPORT_FORMAT, export_best, export_checkpoint, load_snippet

ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"
CLASSES = [{"label": 1, "name": "circle", "dataset_id": 5}, {"label": 2, "name": "square", "dataset_id": 17},
           {"label": 3, "name": "triangle", "dataset_id": 42}]
SIZE = 64  # px, min_size = max_size


def trained_state(*, weights: str | None, freeze_depth: int, epoch: int = 3, ap: float = 0.42) -> tuple[nn.Module, TrialState]:
    """A model built as a trial builds it, with moved BatchNorm statistics, in a hand-made TrialState."""
    cfg = TrialConfig.model_validate({
        "model": {"architecture": ARCH, "weights": weights, "min_size": SIZE, "max_size": SIZE},
        "hparams": {"freeze_depth": freeze_depth},
    })
    torch.manual_seed(0)
    model = build_model(cfg.model, [c["name"] for c in CLASSES])
    apply_freeze(model, architecture=ARCH, depth=freeze_depth)
    calibrate_norms(model, torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.normal_(0.0, 0.3)  # spread the scores
        for name, buf in model.named_buffers():
            if name.endswith("num_batches_tracked"):
                buf.fill_(7)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3)
    metrics = {"epoch": epoch, "AP": ap, "AR100": ap / 2, "APs": float("nan")}
    state = TrialState(epoch=epoch, model=model.state_dict(), optimizer=optimizer.state_dict(),
                       scheduler=scheduler.state_dict(), scaler=torch.amp.GradScaler("cpu", enabled=False).state_dict(),
                       rng=capture_rng(), config=cfg.model_dump(mode="json"), metrics=metrics, classes=CLASSES,
                       architecture=ARCH, model_kwargs=model_kwargs(cfg.model), history=[metrics])
    return model.eval(), state


@pytest.fixture(scope="module")
def coco_weights(tmp_path_factory) -> Path:
    """A random 91-class state_dict file: the stand-in for torchvision's COCO weights (no download)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "coco91.pth"
    torch.save(get_model(ARCH, weights=None, weights_backbone=None, num_classes=91).state_dict(), path)
    return path


def _trained(kind: str, weights: str | None, depth: int, root: Path):
    model, state = trained_state(weights=weights, freeze_depth=depth)
    save_checkpoint(root / "ckpt", state)
    out = export_checkpoint(root / "ckpt", root / "best.pt", trial_id="abc_00001", sweep="/runs/s")
    return kind, model, root / "ckpt", out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """(kind, in-process model, checkpoint dir, .pt export) of a trial trained from random weights."""
    return _trained("scratch", None, 0, tmp_path_factory.mktemp("scratch"))


@pytest.fixture(scope="module")
def pretrained(coco_weights, tmp_path_factory):
    """The same for a trial started from (stand-in) COCO weights with 3 stages frozen: FrozenBatchNorm2d."""
    return _trained("pretrained", str(coco_weights), 3, tmp_path_factory.mktemp("pretrained"))


@pytest.fixture(params=["scratch", "pretrained"])
def trained(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, SIZE, 80, generator=g), torch.rand(3, 50, SIZE, generator=g)]


def assert_same_detections(got, want, *, exact: bool) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert len(w["boxes"]) > 0
        for key in ("boxes", "labels", "scores"):
            if exact or key == "labels":
                assert torch.equal(g[key], w[key]), key
            else:  # FrozenBatchNorm2d and BatchNorm2d round differently; ~50 layers grow it to ~1e-4 relative
                torch.testing.assert_close(g[key], w[key], atol=1e-2 if key == "boxes" else 1e-4, rtol=1e-3)


def test_pt_export_holds_the_documented_fields(trained):
    kind, _, _, out = trained
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["format"] == EXPORT_FORMAT and ckpt["format_version"] == 1
    assert ckpt["architecture"] == ARCH and ckpt["num_classes"] == len(CLASSES) + 1
    assert ckpt["model_kwargs"] == {"min_size": SIZE, "max_size": SIZE} == ckpt["image_size"]
    assert ckpt["classes"] == CLASSES
    assert ckpt["trial_id"] == "abc_00001" and ckpt["sweep"] == "/runs/s" and ckpt["epoch"] == 3
    assert ckpt["metrics"]["AP"] == 0.42 and ckpt["metrics"]["APs"] != ckpt["metrics"]["APs"]  # NaN kept
    assert (ckpt["config"]["model"]["weights"] is None) == (kind == "scratch")
    assert ckpt["config"]["hparams"]["freeze_depth"] == (0 if kind == "scratch" else 3)


def test_state_dict_fits_the_plain_torchvision_build(trained):
    kind, model, _, out = trained
    state_dict = torch.load(out, weights_only=True)["state_dict"]
    plain = get_model(ARCH, weights=None, weights_backbone=None, num_classes=4, min_size=SIZE, max_size=SIZE)
    assert list(state_dict) == list(plain.state_dict())
    frozen = [n for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    assert (len(frozen) > 0) == (kind == "pretrained")
    for name in frozen:  # FrozenBatchNorm2d has no counter: added as 0
        assert state_dict[f"{name}.num_batches_tracked"].item() == 0
        assert torch.equal(state_dict[f"{name}.running_var"], model.get_submodule(name).running_var)
    counters = [k for k in state_dict if k.endswith("num_batches_tracked")]
    kept = [k for k in model.state_dict() if k.endswith("num_batches_tracked")]
    assert len(kept) + len(frozen) == len(counters) > 0  # every normalisation layer has its counter
    assert all(state_dict[k].item() == 7 for k in kept)  # a trained counter is kept


def _isolated_python(tmp_path: Path) -> Path:
    """A venv seeing the installed packages but not boxtune (its editable-install hook is never run)."""
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    site = env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    # a plain path line: the directory joins sys.path, but its own .pth hooks are not executed
    (site / "installed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env / "bin" / "python"


def test_snippet_loads_with_torchvision_alone(pretrained, images, tmp_path):
    """In a Python that cannot import boxtune; the pretrained trial is the harder case (BatchNorm rebuilt)."""
    _, model, _, out = pretrained
    work = tmp_path / "outside"
    work.mkdir()
    (work / "best.pt").write_bytes(out.read_bytes())
    torch.save(images, work / "images.pt")
    code = "\n".join([
        "import torch, torchvision",
        "try:\n    import tune\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('boxtune is importable')",
        load_snippet(),
        "with torch.inference_mode():\n    out = model(torch.load('images.pt', weights_only=True))",
        "torch.save(out, 'out.pt')",
    ])
    result = subprocess.run([str(_isolated_python(tmp_path)), "-I", "-c", code], cwd=work, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-500:]
    with torch.inference_mode():
        want = model(images)
    assert_same_detections(torch.load(work / "out.pt", weights_only=True), want, exact=False)


def test_snippet_is_the_documented_one():
    lines = load_snippet().splitlines()
    assert len(lines) == 3 and lines[0].startswith("ckpt = torch.load(")
    assert all(line in export_module.__doc__ for line in lines)


def test_eps_difference_is_folded_into_the_weight():
    """torchvision's resnet50_fpn COCO weights run FrozenBatchNorm2d with eps 0; BatchNorm2d has 1e-5."""
    torch.manual_seed(0)
    frozen, plain = FrozenBatchNorm2d(8, eps=0.0), nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        frozen.running_var.copy_(torch.rand(8) * 1e-4 + 1e-6)  # small variances: eps matters
        frozen.running_mean.normal_()
        frozen.weight.normal_()
        frozen.bias.normal_()
    state = normalize_state_dict(frozen.state_dict(), model=plain, trained_eps={"": 0.0})
    plain.load_state_dict(state)
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(plain(x), frozen(x), rtol=1e-4, atol=1e-4)
    unfolded = nn.BatchNorm2d(8).eval()
    unfolded.load_state_dict(normalize_state_dict(frozen.state_dict(), model=unfolded))
    assert not torch.allclose(unfolded(x), frozen(x), rtol=1e-2, atol=1e-2)


def test_foreign_keys_are_refused():
    state = nn.BatchNorm2d(4).state_dict() | {"extra.weight": torch.zeros(1)}
    with pytest.raises(BoxtuneError, match=r"unexpected \['extra.weight'\]"):
        normalize_state_dict(state, model=nn.BatchNorm2d(4))


def test_torchscript_export_matches_eager(scratch, images, tmp_path):
    _, model, ckpt, _ = scratch
    out = export_checkpoint(ckpt, tmp_path / "best.ts", fmt="torchscript")
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["classes"] == CLASSES and meta["num_classes"] == 4 and "state_dict" not in meta
    assert meta["metrics"]["APs"] is None  # NaN is not JSON
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message="RCNN always returns", category=UserWarning)
        scripted = torch.jit.load(str(out))  # needs torchvision imported: its ops (nms) live there
        with torch.inference_mode():
            _, got = scripted(images)
            want = model(images)
    assert_same_detections(got, want, exact=True)


def test_onnx_export_matches_torch(scratch, images, tmp_path):
    _, model, ckpt, _ = scratch
    import onnxruntime

    out = export_checkpoint(ckpt, tmp_path / "best.onnx", fmt="onnx")
    assert json.loads(Path(f"{out}.json").read_text())["file_format"] == "onnx"
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["boxes", "labels", "scores"]
    for image in images:  # two sizes: height and width are dynamic
        boxes, labels, scores = session.run(None, {"image": image.numpy()})
        with torch.inference_mode():
            want = model([image])[0]
        got = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels), "scores": torch.from_numpy(scores)}
        order_g, order_w = torch.argsort(got["scores"], descending=True), torch.argsort(want["scores"], descending=True)
        assert len(order_g) == len(order_w) > 0
        # ONNX Runtime's kernels sum in another order: float32 noise of ~2e-4 relative after ~50 layers
        torch.testing.assert_close(got["boxes"][order_g], want["boxes"][order_w], atol=1e-2, rtol=1e-3)  # px
        torch.testing.assert_close(got["scores"][order_g], want["scores"][order_w], atol=1e-3, rtol=0)
        assert torch.equal(got["labels"][order_g], want["labels"][order_w])


def test_onnx_without_the_package_says_what_to_install(scratch, tmp_path, monkeypatch):
    _, _, ckpt, _ = scratch
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    with pytest.raises(BoxtuneError, match=r"pip install boxtune\[onnx\]"):
        export_checkpoint(ckpt, tmp_path / "best.onnx", fmt="onnx")
    assert not (tmp_path / "best.onnx").exists()


@pytest.mark.parametrize("fmt,match", [("tflite", "expected one of pt, torchscript, onnx"), ("pt", "is a folder")])
def test_bad_arguments(scratch, tmp_path, fmt, match):
    _, _, ckpt, _ = scratch
    with pytest.raises(BoxtuneError, match=match):
        export_checkpoint(ckpt, tmp_path, fmt=fmt)


# ---- export_best on the suite's production sweep (tests/shared_run.py) -------------------------

@pytest.fixture(scope="module")
def sweep(shared_run):
    """The shared ``boxtune sweep`` run and its ranking: the best trial, another one, the errored one."""
    import pyarrow.parquet as pq

    rows = pq.read_table(shared_run.run / "ranking.parquet").to_pylist()
    finished = [r for r in rows if r["status"] == "TERMINATED"]
    errored = [r for r in rows if r["status"] == "ERROR"]
    assert rows[0]["rank"] == 1 and len(finished) >= 2 and len(errored) == 1
    # the runner-up: checkpoints.keep_trials (default 2) keeps the top two trials' checkpoints
    return str(shared_run.run), {"best": rows[0], "other": finished[1], "nockpt": errored[0]}


def _same_epoch(ckpt: dict, row: dict) -> None:
    """The export is the ranking's best epoch of its trial, with that epoch's numbers."""
    assert (ckpt["trial_id"], ckpt["epoch"]) == (row["trial"], row["best_epoch"])
    for key in ("AP", "AP50", "AR100"):
        assert ckpt["metrics"][key] == pytest.approx(row[key], abs=1e-12), key


def test_export_best_takes_the_best_epoch_of_the_best_trial(sweep, tmp_path):
    run, rows = sweep
    _same_epoch(torch.load(export_best(run, tmp_path / "best.pt"), weights_only=True), rows["best"])


def test_export_best_of_a_chosen_trial(sweep, tmp_path):
    run, rows = sweep
    ckpt = torch.load(export_best(run, tmp_path / "other.pt", trial=rows["other"]["trial"]), weights_only=True)
    _same_epoch(ckpt, rows["other"])


def test_export_best_errors(sweep, tmp_path):
    run, rows = sweep
    nockpt = rows["nockpt"]["trial"]  # errored in its first epoch: no checkpoint at all
    with pytest.raises(BoxtuneError, match=f"no trial 'nope'; trials: .*{nockpt}"):
        export_best(run, tmp_path / "x.pt", trial="nope")
    with pytest.raises(BoxtuneError, match=f"trial {nockpt} has no checkpoint"):
        export_best(run, tmp_path / "x.pt", trial=nockpt)
    empty = tmp_path / "empty"
    empty.mkdir()
    # a sweep whose config is written and whose Tuner has not yet written its experiment state
    (empty / "sweep.yaml").write_text(yaml.safe_dump(tiny_sweep("empty", tmp_path / "data", tmp_path)))
    with pytest.raises(BoxtuneError, match="no trials yet"):
        export_best(str(empty), tmp_path / "x.pt")
    assert not list(tmp_path.glob("*.pt"))


def test_predict_reads_what_export_best_wrote(sweep, tmp_path):
    from tune.ship.predict import load_export

    run, rows = sweep
    model, meta = load_export(export_best(run, tmp_path / "best.pt"))
    assert meta["trial_id"] == rows["best"]["trial"] and not model.training


def test_onnx_metadata_states_its_contract_and_baked_threshold(scratch, images, tmp_path):
    import onnxruntime

    _, _, ckpt, _ = scratch
    default = export_checkpoint(ckpt, tmp_path / "default.onnx", fmt="onnx")
    meta = json.loads(Path(f"{default}.json").read_text())
    assert meta["score_threshold"] == 0.05 == meta["onnx"]["score_threshold"]  # Faster R-CNN's own
    assert meta["eval_score_threshold"] == 0.001
    out = export_checkpoint(ckpt, tmp_path / "low.onnx", fmt="onnx", score_threshold=0.01)
    meta = json.loads(Path(f"{out}.json").read_text())
    contract = meta["onnx"]
    assert meta["score_threshold"] == contract["score_threshold"] == 0.01
    assert contract["input"]["name"] == "image" and contract["input"]["shape"] == [3, "height", "width"]
    assert contract["input"]["dtype"] == "float32" and "RGB" in contract["input"]["meaning"]
    assert list(contract["outputs"]) == ["boxes", "labels", "scores"]
    assert contract["outputs"]["boxes"]["meaning"] == "x1, y1, x2, y2 in pixels of the input image"
    assert contract["max_detections"] == 100 and contract["opset"] == 17
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [contract["input"]["name"]]
    assert [o.name for o in session.get_outputs()] == list(contract["outputs"])
    boxes, labels, scores = session.run(None, {"image": images[0].numpy()})
    assert str(boxes.dtype) == "float32" and str(labels.dtype) == "int64" and str(scores.dtype) == "float32"
    assert scores.min() > 0.01 and (scores < 0.05).any()  # the baked filter, not the family's 0.05
    assert (scores[:-1] >= scores[1:]).all()  # highest first
    assert len(scores) <= contract["max_detections"]
    h, w = images[0].shape[1:]
    assert (boxes[:, 0] <= boxes[:, 2]).all() and boxes[:, 2].max() <= w and boxes[:, 3].max() <= h  # px
    with pytest.raises(BoxtuneError, match="a .pt export takes it when it runs"):
        export_checkpoint(ckpt, tmp_path / "x.pt", score_threshold=0.01)
