"""A pretrained source detector made here: the stand-in for torchvision's COCO weights.

COCO weights cannot be downloaded on the machines this project is measured on, yet every claim
about fine-tuning (copied head rows, freeze depth, early rungs that predict the final AP) is a
claim about a pretrained start. This script makes one: a fasterrcnn_mobilenet_v3_large_320_fpn
trained from random weights on ``SOURCE_SPEC`` (eight shapes, each named after a COCO category,
on three background styles; ``trainables.data.demo``), then saved as a plain 91-class torchvision
state_dict, the format of torchvision's own COCO weights files, so ``model.weights: <file>.pth``
loads it as it would load those. Each class's head rows sit at its COCO category's row
(``coco_label``); the other 91 - 9 rows can never win (zero weights, logit bias -10).

The file is cached in ``~/.cache/boxtune/`` (``$BOXTUNE_CACHE`` overrides it), keyed by the
generator's spec, the dataset's size and seed and the training settings; a second call with the
same settings returns the cached file. It is never written into the repository. Until the file is
written, the generated data and each epoch's checkpoint stay in ``source-<key>-work/`` beside it,
so a run that is stopped continues from its last finished epoch when started again.

    python benchmarks/source_model.py                      # 400 images at 160 px, 12 epochs (~20 min, 2 idle cores)
    python benchmarks/source_model.py --epochs 6 --images 200   # smaller, when the CPU is busy
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARCHITECTURE = "fasterrcnn_mobilenet_v3_large_320_fpn"
_UNUSED_ROW_BIAS = -10.0  # logit of a COCO row no source class uses: softmax share ~1e-5 of background's


@dataclass(frozen=True)
class SourceSettings:
    """What the source model depends on; all of it goes into the cache key."""

    num_images: int = 400
    # px, the generated images' side and the model's min_size/max_size. Not below 160: this
    # model's smallest anchor is 32 px and its coarsest map has stride 32 (a 3x3 map at 96 px);
    # at 96 px it was still at AP 0.000 after 3 of 6 epochs.
    image_size: int = 160
    epochs: int = 12
    lr: float = 0.02  # SGD, momentum 0.9, cosine decay to 0 after a 50-iteration warm-up
    batch_size: int = 4
    seed: int = 0
    val_fraction: float = 0.2

    def key(self) -> str:
        from trainables.data.demo import SOURCE_SPEC

        data = SOURCE_SPEC.key(num_images=self.num_images, image_size=self.image_size, seed=self.seed)
        text = json.dumps({"data": data, "architecture": ARCHITECTURE, **self.__dict__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """``$BOXTUNE_CACHE`` or ``~/.cache/boxtune``."""
    return Path(os.environ.get("BOXTUNE_CACHE") or Path.home() / ".cache" / "boxtune")


def model_config(image_size: int, weights: str | None = None, class_map: dict | None = None) -> dict:
    """The model section the source is trained with and the benchmarks fine-tune with."""
    return {"architecture": ARCHITECTURE, "weights": weights, "class_map": class_map or {},
            "min_size": image_size, "max_size": image_size,
            "box_batch_size_per_image": 128}  # RoIs per image: plenty for <= 6 objects, ~5x faster on CPU


def expand_to_coco(state_dict: dict, class_names: list[str]) -> dict:
    """A K-class Faster R-CNN state_dict as a 91-class one: label k + 1's rows moved to ``coco_label(class_names[k])``."""
    import torch

    from trainables.heads import coco_label
    from trainables.model import COCO_NUM_CLASSES

    out = dict(state_dict)
    prefix = "roi_heads.box_predictor."
    cls_w, cls_b = state_dict[prefix + "cls_score.weight"], state_dict[prefix + "cls_score.bias"]
    box_w, box_b = state_dict[prefix + "bbox_pred.weight"], state_dict[prefix + "bbox_pred.bias"]
    new_cls_w = torch.zeros(COCO_NUM_CLASSES, cls_w.shape[1])
    new_cls_b = torch.full((COCO_NUM_CLASSES,), _UNUSED_ROW_BIAS)
    new_box_w = torch.zeros(4 * COCO_NUM_CLASSES, box_w.shape[1])
    new_box_b = torch.zeros(4 * COCO_NUM_CLASSES)
    rows = [0] + [coco_label(name) for name in class_names]  # torchvision counts background as class 0
    for label, row in enumerate(rows):
        new_cls_w[row], new_cls_b[row] = cls_w[label], cls_b[label]
        new_box_w[4 * row : 4 * row + 4], new_box_b[4 * row : 4 * row + 4] = (
            box_w[4 * label : 4 * label + 4], box_b[4 * label : 4 * label + 4])
    out.update({prefix + "cls_score.weight": new_cls_w, prefix + "cls_score.bias": new_cls_b,
                prefix + "bbox_pred.weight": new_box_w, prefix + "bbox_pred.bias": new_box_b})
    # BatchNorm2d's counters: torchvision's COCO files carry none (their backbone is FrozenBatchNorm2d)
    return {k: v for k, v in out.items() if not k.endswith("num_batches_tracked")}


def evaluate_weights(weights: Path, manifest, image_size: int, *, threads: int = 2) -> dict[str, float]:
    """COCO stats of a 91-class weights file on ``manifest``'s val split, each class mapped to its own name."""
    import torch

    from trainables.augment import build_eval_transforms
    from trainables.coco_eval import build_coco_gt, evaluate_detections
    from trainables.config import ModelConfig
    from trainables.data import DetectionDataset, collate_detection
    from trainables.loop import predict
    from trainables.model import build_model

    torch.set_num_threads(threads)
    names = manifest.class_names
    cfg = ModelConfig.model_validate(model_config(image_size, str(weights), {n: n for n in names}))
    model = build_model(cfg, names)
    records = manifest.records("val")
    loader = torch.utils.data.DataLoader(DetectionDataset(records, transforms=build_eval_transforms()),
                                         batch_size=4, collate_fn=collate_detection)
    with torch.no_grad():
        detections = predict(model, loader, device=torch.device("cpu"))
    gt = build_coco_gt(records, [(c.dataset_id, c.name) for c in manifest.classes])
    return evaluate_detections(gt, detections, label_to_dataset_id=manifest.label_to_dataset_id)


def source_model(settings: SourceSettings = SourceSettings(), *, threads: int = 2, force: bool = False,
                 echo=print) -> Path:
    """The cached source weights file for ``settings``, trained first if it is not cached yet."""
    import torch

    from trainables.checkpoint import load_checkpoint
    from trainables.data import build_manifest
    from trainables.data.demo import SOURCE_SPEC, make_shapes_dataset
    from trainables.loop import TrialResources, run_trial
    from trainables.reporting import LocalReporter

    root = cache_dir()
    key = settings.key()
    path, info_path = root / f"source-{key}.pth", root / f"source-{key}.json"
    if path.is_file() and info_path.is_file() and not force:
        return path
    root.mkdir(parents=True, exist_ok=True)
    # data and per-epoch checkpoints live next to the file until it is written: an interrupted
    # run continues from its last finished epoch (run_trial resumes exactly)
    work = root / f"source-{key}-work"
    data_dir = work / "data"
    annotations = data_dir / "annotations.json"
    if not annotations.is_file():
        annotations = make_shapes_dataset(data_dir, SOURCE_SPEC, num_images=settings.num_images,
                                          image_size=settings.image_size, seed=settings.seed)
    manifest = build_manifest(annotations, val_fraction=settings.val_fraction, seed=settings.seed)
    cfg = {
        "model": model_config(settings.image_size),
        "training": {"epochs": settings.epochs, "seed": settings.seed},
        "hparams": {"optimizer": "sgd", "lr": settings.lr, "momentum": 0.9, "weight_decay": 1e-4,
                    "schedule": "cosine", "warmup_iters": 50, "batch_size": settings.batch_size, "hflip_p": 0.5},
    }
    reporter = LocalReporter(work / "trial")
    resumed = reporter.latest_checkpoint()
    if resumed is not None:
        echo(f"source model: continuing {work} after {resumed.name}")
    run_trial(cfg, manifest=manifest, reporter=reporter, resources=TrialResources(cpus=threads, device="cpu"))
    history = reporter.history()
    for h in history:
        echo(f"source epoch {h['epoch']}: AP {h['AP']:.3f} AP50 {h['AP50']:.3f} {h['images_per_s']:.2f} img/s")
    state = load_checkpoint(reporter.latest_checkpoint())  # the last epoch: cosine ends at lr 0
    train_s = sum(h["train_s"] + h["eval_s"] for h in history)  # over every run, resumed ones included
    weights = expand_to_coco(state.model, manifest.class_names)
    tmp = path.with_suffix(".pth.tmp")
    torch.save(weights, tmp)
    os.replace(tmp, path)
    # the file, loaded as `model.weights` is, must compute what the trained model did
    stats = evaluate_weights(path, manifest, settings.image_size, threads=threads)
    info = {"settings": settings.__dict__, "spec": SOURCE_SPEC.description, "classes": manifest.class_names,
            "val_AP": stats["AP"], "val_AP50": stats["AP50"], "val_AR100": stats["AR100"],
            "train_AP_last_epoch": history[-1]["AP"], "train_s": round(train_s, 1),
            "history": [{k: h[k] for k in ("epoch", "AP", "AP50", "AR100", "images_per_s")} for h in history]}
    info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)  # the data is regenerated from the spec when needed
    echo(f"source model: {path} (val AP {stats['AP']:.3f}, AP50 {stats['AP50']:.3f}, {train_s / 60:.1f} min)")
    return path


def source_info(settings: SourceSettings = SourceSettings()) -> dict:
    """What ``source_model`` recorded about the cached file (settings, val AP, per-epoch history)."""
    return json.loads((cache_dir() / f"source-{settings.key()}.json").read_text())


def _args(argv=None) -> argparse.Namespace:
    d = SourceSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=d.num_images)
    p.add_argument("--size", type=int, default=d.image_size, help="image side and model input side, px")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--force", action="store_true", help="train again even if the file is cached")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _args(argv)
    settings = SourceSettings(num_images=args.images, image_size=args.size, epochs=args.epochs, lr=args.lr,
                              seed=args.seed)
    path = source_model(settings, threads=args.threads, force=args.force)
    info = source_info(settings)
    print(json.dumps({"path": str(path), "val_AP": info["val_AP"], "val_AP50": info["val_AP50"],
                      "train_s": info["train_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
