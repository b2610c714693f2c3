"""A sweep that searches ``architecture``: SSDlite against Faster R-CNN MobileNet on the same data."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_sweep

from trainables.errors import ConfigError
from tune.config import SweepConfig
from tune.launch.sweep import check_space
from tune.ship.export import export_best
from tune.ship.predict import load_export
from tune.workflow import run_sweep

ARCHS = ["ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_fpn"]
SPACE = {"architecture": {"choice": ARCHS}, "lr": {"loguniform": [0.002, 0.02]}, "batch_size": 4}
# Faster R-CNN's size keys live under its own name: SSDlite's builder fixes 320x320 and takes none
MODEL = {"weights": None, "by_architecture": {
    "fasterrcnn_mobilenet_v3_large_fpn": {"min_size": 96, "max_size": 96, "box_batch_size_per_image": 64}}}


def _config(tmp_path, tiny_demo, model=MODEL) -> SweepConfig:
    return SweepConfig.model_validate(tiny_sweep(
        "families", tiny_demo, tmp_path / "runs", model=model, training={"epochs": 1, "seed": 0},
        # seed 0: the random sampler's two draws are one of each architecture
        search={"space": SPACE, "num_trials": 2, "sampler": "random", "seed": 0}, max_concurrent=2))


def test_searched_architecture_ranks_both_families_and_exports_the_best(tmp_path, tiny_demo, ray_local):
    rows = run_sweep(_config(tmp_path, tiny_demo), echo=lambda *_: None)
    assert sorted(r["architecture"] for r in rows) == sorted(ARCHS)  # one trial each, both ranked
    assert all(r["status"] == "TERMINATED" and r["error"] is None and r["best_epoch"] == 1 for r in rows)
    assert [r["rank"] for r in rows] == [1, 2] and rows[0]["score"] >= rows[1]["score"]

    out = export_best(str(tmp_path / "runs" / "families"), tmp_path / "best.pt")
    model, meta = load_export(out)
    assert meta["trial_id"] == rows[0]["trial"] and meta["architecture"] == rows[0]["architecture"]
    assert meta["config"]["model"]["architecture"] == rows[0]["architecture"]
    ssd = meta["architecture"] == ARCHS[0]
    assert meta["model_kwargs"] == ({} if ssd else {"min_size": 96, "max_size": 96})
    assert meta["num_classes"] == 4  # three demo classes + index 0
    with torch.inference_mode():
        out = model([torch.rand(3, 96, 96)])[0]
    assert set(out) == {"boxes", "labels", "scores"} and not (out["labels"] == 0).any()


def test_a_shared_size_key_that_ssdlite_cannot_use_fails_before_ray(tmp_path, tiny_demo):
    cfg = _config(tmp_path, tiny_demo, model={"weights": None, "min_size": 96, "max_size": 96})
    with pytest.raises(ConfigError, match=r"min_size does not apply to ssdlite320_mobilenet_v3_large"):
        check_space(cfg, n_train=18)


# --- the input size, searched -------------------------------------------------------------------

SIZED_SPACE = {"architecture": {"choice": ARCHS},
               "image_size": {"choice": [64, 128], "when": {"architecture": ARCHS[1]}}, "batch_size": 4}


def test_a_sampled_image_size_sets_min_and_max_size_over_by_architecture(tmp_path, tiny_demo):
    cfg = SweepConfig.model_validate(tiny_sweep("sized", tiny_demo, tmp_path / "runs", model=MODEL,
                                                search={"space": SIZED_SPACE, "num_trials": 2}))
    drawn: list[dict] = []
    check_space(cfg, n_train=18, drawn=drawn)
    sizes = {(c["model"]["architecture"], c["model"].get("min_size"), c["model"].get("max_size")) for c in drawn}
    # Faster R-CNN at both sampled sizes, never at by_architecture's 96; SSDlite with the schema's
    # defaults, which its builder does not take (model_kwargs are {} for it)
    assert sizes == {(ARCHS[0], 320, 640), (ARCHS[1], 64, 64), (ARCHS[1], 128, 128)}
    assert all(c["model"].get("box_batch_size_per_image") == 64 for c in drawn if c["model"]["architecture"] == ARCHS[1])
    assert all("image_size" not in c["hparams"] for c in drawn)


def test_an_image_size_that_ssdlite_would_get_fails_before_ray(tmp_path, tiny_demo):
    space = {**SIZED_SPACE, "image_size": {"choice": [64, 128]}}  # no `when`: SSDlite trials would get one
    cfg = SweepConfig.model_validate(tiny_sweep("sized", tiny_demo, tmp_path / "runs", model=MODEL,
                                                search={"space": space, "num_trials": 2}))
    with pytest.raises(ConfigError, match=r"image_size: ssdlite320_mobilenet_v3_large resizes every image to "
                                          r"320x320 .* sample image_size only when another architecture is chosen"):
        check_space(cfg, n_train=18)


@pytest.mark.parametrize("spec, message", [
    ({"int": [16, 96]}, "image_size: 16 is not a valid image_size: Input should be greater than or equal to 32"),
    ({"choice": [96, 4000]}, "image_size: 4000 is not a valid image_size: Input should be less than or equal to 2048"),
    ({"uniform": [64.0, 96.0]}, "image_size"),
])
def test_an_image_size_out_of_the_model_schema_is_refused_naming_it(spec, message):
    from search_spaces.declarative import parse_space

    with pytest.raises(ConfigError, match=message):
        parse_space({"image_size": spec, "batch_size": 4})
