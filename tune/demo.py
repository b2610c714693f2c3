"""``boxtune demo``: the demo dataset and a quick sweep on a local Ray, ending with the ranking.

Sized to finish in under 10 minutes on 2 CPU cores with no GPU and no downloads: a randomly
initialised MobileNetV3 Faster R-CNN at 160 px, the ``quick`` search space, batch halving (the same stops and winner on every run).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from tune.config import SweepConfig

__all__ = ["demo_config", "run_demo"]


def demo_config(out: Path, *, num_trials: int = 4, epochs: int = 4, name: str = "demo",
                image_size: int = 160) -> SweepConfig:
    return SweepConfig.model_validate({
        "name": name,
        "data": {"path": str(out / "data" / "annotations.json"), "val_fraction": 0.2, "seed": 0},
        "model": {"architecture": "fasterrcnn_mobilenet_v3_large_320_fpn", "weights": None,
                  "min_size": image_size, "max_size": image_size,  # px: the generated images' side
                  "box_batch_size_per_image": 128},
        "training": {"epochs": epochs, "seed": 0, "image_log_every": 1, "image_log_count": 4},
        "search": {"space": "quick", "num_trials": num_trials, "sampler": "tpe", "seed": 0},
        "scheduler": {"name": "halving", "grace_period": 2, "reduction_factor": 2},
        "resources": {"cpu": 1, "gpu": 0},
        "max_concurrent": 2,
        "storage": str(out / "runs"),
        "retries": 0,
    })


def run_demo(out: Path, *, num_trials: int = 4, epochs: int = 4, address: str | None = None,
             num_images: int = 240, image_size: int = 160) -> list[dict]:
    """Generate the demo data (once per ``out``) and sweep it; ``num_images`` and ``image_size`` shrink it for a smoke test."""
    from trainables.data import make_demo_dataset
    from tune.results.report import sweep_summary
    from tune.workflow import sweep

    out = out.resolve()
    if not (out / "data" / "annotations.json").is_file():
        print(f"generating the demo dataset in {out / 'data'}")
        make_demo_dataset(out / "data", num_images=num_images, image_size=image_size, seed=0)
    # a fresh experiment name per run, so `make demo` can be run again
    name = next(n for n in (f"demo-{i}" if i else "demo" for i in itertools.count()) if not (out / "runs" / n).exists())
    cfg = demo_config(out, num_trials=num_trials, epochs=epochs, name=name, image_size=image_size)
    result = sweep(cfg, address=address)
    run = result.view.uri
    print()
    print(sweep_summary(result.view, result.rows))
    print(f"\nnext: boxtune report {run} --plot {out / 'plots'}   |   boxtune tensorboard {run}   |   "
          f"boxtune export {run} --out {out / 'best.pt'}")
    return result.rows
