"""``boxtune predict``: exported model on image files, COCO results equal to the in-process model's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import calibrate_norms
from PIL import Image

from trainables.checkpoint import TrialState, save_checkpoint
from trainables.config import TrialConfig
from trainables.errors import BoxtuneError
from trainables.model import build_model, model_kwargs
from tune.ship.export import export_checkpoint
from tune.ship.predict import collect_images, load_export, predict_files, read_image

ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"
CLASSES = [{"label": 1, "name": "cat", "dataset_id": 3}, {"label": 2, "name": "dog", "dataset_id": 18}]
SIZE = 64  # px


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(in-process trained model, .pt export path) from a hand-made trial checkpoint."""
    cfg = TrialConfig.model_validate({"model": {"architecture": ARCH, "weights": None, "min_size": SIZE, "max_size": SIZE}})
    torch.manual_seed(0)
    model = build_model(cfg.model, [c["name"] for c in CLASSES])
    calibrate_norms(model, torch.Generator().manual_seed(1))
    with torch.no_grad():  # a fresh head scores every box alike; spread the scores as training would
        model.roi_heads.box_predictor.cls_score.weight.normal_(0.0, 0.3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3)
    metrics = {"epoch": 1, "AP": 0.1, "AR100": 0.2}
    state = TrialState(epoch=1, model=model.state_dict(), optimizer=optimizer.state_dict(),
                       scheduler=scheduler.state_dict(), scaler={}, rng={}, config=cfg.model_dump(mode="json"),
                       metrics=metrics, classes=CLASSES, architecture=ARCH, model_kwargs=model_kwargs(cfg.model),
                       history=[metrics])
    root = tmp_path_factory.mktemp("export")
    save_checkpoint(root / "ckpt", state)
    return model.eval(), export_checkpoint(root / "ckpt", root / "best.pt")


def _write_image(path: Path, seed: int, size: tuple[int, int], *, orientation: int | None = None) -> Path:
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels)
    if orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation  # EXIF Orientation tag
        image.save(path, exif=exif)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    _write_image(images / "b.png", 1, (80, 60))
    _write_image(images / "a.jpg", 2, (64, 64))
    _write_image(images / "c.bmp", 3, (50, 70))
    (images / "notes.txt").write_text("not an image")
    return images


def test_folders_expand_to_sorted_images_after_single_files(folder, tmp_path):
    extra = _write_image(tmp_path / "z.png", 4, (40, 40))
    assert [p.name for p in collect_images([extra, folder])] == ["z.png", "a.jpg", "b.png", "c.bmp"]


def test_results_equal_the_in_process_model(exported, folder, tmp_path):
    model, path = exported
    out = tmp_path / "res" / "detections.json"
    n = predict_files(path, [folder], out=out, score_threshold=0.05, batch_size=2, device="cpu")
    results = json.loads(out.read_text())
    assert n == len(results) > 0
    files = collect_images([folder])
    with torch.inference_mode():  # the same batches: padding to a batch's largest image changes the numbers
        outputs = [o for batch in (files[:2], files[2:]) for o in model([read_image(p).float() / 255 for p in batch])]
    want = []
    for image_id, (file, output) in enumerate(zip(files, outputs, strict=True), 1):
        for box, label, score in zip(output["boxes"].tolist(), output["labels"].tolist(), output["scores"].tolist(), strict=True):
            if score >= 0.05:
                want.append({"image_id": image_id, "file_name": str(file), "category_id": CLASSES[label - 1]["dataset_id"],
                             "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score})
    assert results == want  # the same floats
    assert {r["category_id"] for r in results} <= {3, 18}


def test_threshold_filters_scores(exported, folder, tmp_path):
    _, path = exported
    low = predict_files(path, [folder], out=tmp_path / "low.json", score_threshold=0.0, device="cpu")
    scores = sorted(r["score"] for r in json.loads((tmp_path / "low.json").read_text()))
    threshold = scores[len(scores) // 2]
    high = predict_files(path, [folder], out=tmp_path / "high.json", score_threshold=threshold, device="cpu")
    assert low == len(scores) > high == sum(s >= threshold for s in scores) > 0
    assert min(r["score"] for r in json.loads((tmp_path / "high.json").read_text())) >= threshold


def test_exif_orientation_is_applied(tmp_path):
    path = _write_image(tmp_path / "rotated.jpg", 5, (80, 40), orientation=6)  # stored landscape, shown portrait
    assert tuple(read_image(path).shape) == (3, 80, 40)


def test_draw_writes_copies_with_boxes(exported, folder, tmp_path):
    _, path = exported
    drawn = tmp_path / "drawn"
    predict_files(path, [folder], out=tmp_path / "d.json", draw=drawn, score_threshold=0.05, device="cpu")
    assert sorted(p.name for p in drawn.iterdir()) == ["a.jpg", "b.png", "c.bmp"]
    original, copy = read_image(folder / "b.png"), read_image(drawn / "b.png")  # png: lossless
    assert copy.shape == original.shape and not torch.equal(copy, original)
    with pytest.raises(BoxtuneError, match="overwrite the input image"):
        predict_files(path, [folder], out=tmp_path / "e.json", draw=folder, device="cpu")


def test_unreadable_image_is_named(exported, folder, tmp_path):
    _, path = exported
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(BoxtuneError, match=r"broken\.jpg: cannot read this image"):
        predict_files(path, [folder], out=tmp_path / "x.json", device="cpu")
    assert not (tmp_path / "x.json").exists()


class Payload:  # a pickled object: exports must never carry one
    pass


@pytest.mark.parametrize("content,match", [
    (lambda p: p.write_bytes(b"plain text, not torch"), "not a torch file"),
    (lambda p: torch.save({"format": "boxtune-export", "obj": Payload()}, p), "refusing to load .* pickled code/objects"),
    (lambda p: torch.save({"format": "something-else", "state_dict": {}}, p), "not a boxtune export"),
    (lambda p: torch.save(torch.zeros(3), p), "not a boxtune export"),
    (lambda p: torch.save({"format_version": 1, "model": {}}, p), "trial checkpoint, not an export"),
])
def test_load_export_refuses_what_is_not_an_export(tmp_path, content, match):
    path = tmp_path / "model.pt"
    content(path)
    with pytest.raises(BoxtuneError, match=match):
        load_export(path)


def test_predict_runs_without_ray(exported):
    _, path = exported
    code = (f"import sys, tune.ship.predict as p; model, meta = p.load_export({str(path)!r}); "
            "assert 'ray' not in sys.modules, 'ray was imported'; print(meta['num_classes'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == str(len(CLASSES) + 1)


def test_threshold_below_the_models_own_filter_keeps_more(exported, folder, tmp_path):
    # a weak model: background outscores every class, so no score reaches Faster R-CNN's own 0.05
    from trainables.model import score_threshold

    model, path = exported
    assert score_threshold(model) == 0.05  # torchvision's default, as the loading snippet builds it
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["roi_heads.box_predictor.cls_score.weight"].mul_(0.02)
    payload["state_dict"]["roi_heads.box_predictor.cls_score.bias"].copy_(torch.tensor([5.0, 0.0, 0.0]))
    weak = tmp_path / "weak.pt"
    torch.save(payload, weak)
    n = predict_files(weak, [folder], out=tmp_path / "low.json", score_threshold=0.0, device="cpu")
    scores = [r["score"] for r in json.loads((tmp_path / "low.json").read_text())]
    assert n == len(scores) > 0 and max(scores) < 0.05  # what the model's own filter would have dropped
    assert predict_files(weak, [folder], out=tmp_path / "high.json", score_threshold=0.05, device="cpu") == 0
    between = sorted(scores)[len(scores) // 2]  # predict keeps a score equal to its threshold
    kept = predict_files(weak, [folder], out=tmp_path / "mid.json", score_threshold=between, device="cpu")
    assert kept == sum(s >= between for s in scores)
