"""The packing preflight's memory estimate: the fit from measured rows, the per-config estimate, and
the check of every config the space check drew against a trial's share of a card."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_sweep

from trainables.architectures import ARCHITECTURES
from trainables.config import TrialConfig
from trainables.errors import ConfigError
from trainables.gpu_memory import (
    TABLE_ENV,
    TABLE_FILE,
    canvas_megapixels,
    estimate_mib,
    fit_table,
    load_table,
)
from tune.config import SweepConfig
from tune.launch.gpu_preflight import check_gpu_memory, parse_nvidia_smi
from tune.launch.sweep import check_space

MOBILE = "fasterrcnn_mobilenet_v3_large_320_fpn"
PARAMS = 18_959_754  # trainable parameters of a 2-class MobileNet-320 at freeze depth 0


def _rows(arch, precision, base, slope, points, *, noise=()):
    rows = []
    for i, (batch, mpx) in enumerate(points):
        rows.append({"arch": arch, "precision": precision, "batch": batch, "megapixels": mpx,
                     "reserved_mib": base + slope * batch * mpx + (noise[i] if noise else 0.0),
                     "trainable_params": PARAMS})
    return rows


POINTS = [(2, 0.2048), (8, 0.2048), (8, 0.8192)]  # the memory part's: 320x640 at batch 2 and 8, 640x1280 at 8


def _table(base=700.0, slope=3000.0, *, context=0.0, precisions=("amp", "fp32"), arch=MOBILE):
    rows = [r for p in precisions for r in _rows(arch, p, base, slope, POINTS)]
    return fit_table(rows, card="NVIDIA A10G, 23028 MiB", context_mib=context, versions={"torch": "2.11.0"})


def test_fit_recovers_the_line_and_reports_the_worst_miss():
    table = _table()
    fit = table["architectures"][MOBILE]["amp"]
    assert (fit["base_mib"], fit["per_image_mpx_mib"], fit["max_residual_mib"]) == (700.0, 3000.0, 0.0)
    assert table["architectures"][MOBILE]["trainable_params"] == PARAMS
    assert [p[:2] for p in fit["measured"]] == [list(p) for p in POINTS]
    # +40 MiB on the middle point: the least-squares line numpy fits through the same points
    rows = _rows(MOBILE, "amp", 700, 3000, POINTS, noise=(0, 40, 0))
    fit = fit_table(rows, card="c", context_mib=None, versions={})["architectures"][MOBILE]["amp"]
    xs, ys = [b * m for b, m in POINTS], [r["reserved_mib"] for r in rows]
    slope, base = np.polyfit(xs, ys, 1)
    assert (fit["per_image_mpx_mib"], fit["base_mib"]) == (round(slope, 1), round(base, 1))
    assert fit["max_residual_mib"] == round(max(abs(np.polyval([slope, base], xs) - ys)), 1) > 0


def test_fit_needs_two_step_sizes():
    table = fit_table(_rows(MOBILE, "amp", 700, 3000, [(2, 0.2048), (2, 0.2048)]), card="c", context_mib=None, versions={})
    assert table["architectures"] == {}


def _trial(**hparams) -> TrialConfig:
    model = {"architecture": MOBILE, "min_size": 320, "max_size": 640, **hparams.pop("model", {})}
    return TrialConfig.model_validate({"model": model, "training": {"amp": hparams.pop("amp", True)},
                                       "hparams": {"batch_size": 4, **hparams}})


LANDSCAPE = [(480, 640), (300, 400)]  # resized to 320x426 and 320x426: canvas 320x448 (padded to 32)


def test_estimate_scales_with_the_canvas_and_adds_the_delivered_batch_and_adams_state():
    table = _table(base=700, slope=3000)
    canvas = 320 * 448 / 1e6
    delivered = 4 * 480 * 640 * 12 / 2**20  # the largest image, float32 RGB, at its own size, 4 of them
    assert estimate_mib(_trial(), table, sizes=LANDSCAPE) == pytest.approx(700 + 3000 * 4 * canvas + delivered)
    # without sizes, or with crops of any shape, the canvas is max_size squared: a batch can mix orientations
    assert estimate_mib(_trial(), table) == pytest.approx(700 + 3000 * 4 * 0.4096)
    assert estimate_mib(_trial(crop_p=0.5), table, sizes=LANDSCAPE) == pytest.approx(700 + 3000 * 4 * 0.4096 + delivered)
    # zoom-out delivers a canvas up to zoom_out_max times each side
    zoomed = estimate_mib(_trial(zoom_out_p=0.5, zoom_out_max=3.0), table, sizes=LANDSCAPE)
    assert zoomed == pytest.approx(700 + 3000 * 4 * canvas + 9 * delivered)
    sgd, adam = estimate_mib(_trial(), table), estimate_mib(_trial(optimizer="adam", lr=1e-4), table)
    assert adam - sgd == pytest.approx(PARAMS * 4 / 2**20)
    assert estimate_mib(_trial(amp=False), _table(precisions=("amp",))) is None  # fp32 not measured
    assert estimate_mib(_trial(model={"architecture": "fasterrcnn_resnet50_fpn"}), table) is None


def test_canvas_follows_torchvisions_resize_and_padding():
    import torch
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    transform = GeneralizedRCNNTransform(320, 640, [0.0] * 3, [1.0] * 3).eval()
    for sizes in (LANDSCAPE, [(480, 640), (640, 480)], [(1000, 1000), (200, 900)]):
        batch, _ = transform([torch.zeros(3, h, w) for h, w in sizes])
        h, w = batch.tensors.shape[-2:]
        assert canvas_megapixels(MOBILE, 320, 640, sizes) == h * w / 1e6, sizes
    # the bound without sizes, max_size squared, is what a batch of 1:2 images in both orientations reaches
    assert canvas_megapixels(MOBILE, 320, 640, [(320, 640), (640, 320)]) == canvas_megapixels(MOBILE, 320, 640) == 0.4096
    # SSDlite's canvas is fixed
    assert canvas_megapixels("ssdlite320_mobilenet_v3_large", 800, 1333, LANDSCAPE) == pytest.approx(0.1024)


def test_table_file_round_trip_and_a_bad_file_is_named(tmp_path):
    assert load_table(tmp_path / "absent.json") is None
    path = tmp_path / "gpu_memory.json"
    path.write_text(json.dumps(_table()))
    assert load_table(path) == {**json.loads(json.dumps(_table())), "path": str(path.resolve())}
    path.write_text(json.dumps({"architectures": {MOBILE: {"trainable_params": 1, "amp": {"base_mib": 1}}}}))
    with pytest.raises(ConfigError, match=f"{path}: architectures.{MOBILE}: expected trainable_params and amp/fp32 fits"):
        load_table(path)
    path.write_text(json.dumps({"card": "x"}))
    with pytest.raises(ConfigError, match=f"{path}: not a GPU memory table"):
        load_table(path)
    path.write_text("{")
    with pytest.raises(ConfigError, match=f"{path}: not a GPU memory table \\(not JSON"):
        load_table(path)


def test_a_table_of_your_own_card_by_environment(tmp_path, monkeypatch):
    own = tmp_path / "a10g.json"
    own.write_text(json.dumps(_table(base=1234)))
    monkeypatch.setenv(TABLE_ENV, str(own))
    assert load_table()["architectures"][MOBILE]["amp"]["base_mib"] == 1234
    assert load_table(tmp_path / "absent.json") is None  # an explicit path still wins
    monkeypatch.setenv(TABLE_ENV, str(tmp_path / "typo.json"))
    with pytest.raises(ConfigError, match=f"^{TABLE_ENV}={tmp_path / 'typo.json'}: no such file$"):
        load_table()


def test_the_measured_table_covers_every_architecture():
    if not TABLE_FILE.is_file():
        pytest.skip("no GPU memory table measured yet: bash benchmarks/gpu.sh on a GPU writes it")
    table = load_table(TABLE_FILE)
    assert set(table["architectures"]) == set(ARCHITECTURES)
    for arch, entry in table["architectures"].items():
        for precision in ("amp", "fp32"):
            assert entry[precision]["per_image_mpx_mib"] > 0, (arch, precision)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory, tiny_demo):
    """Every config the space check draws for a ``default`` sweep (batch 2, 4, 8) at MobileNet-320's default size."""
    tmp = tmp_path_factory.mktemp("drawn")
    cfg = SweepConfig.model_validate(tiny_sweep("mem", tiny_demo, tmp, model={"architecture": MOBILE},
                                                training={"epochs": 8, "seed": 0},
                                                search={"space": "default", "num_trials": 8}))
    configs: list[dict] = []
    checked = check_space(cfg, n_train=400, drawn=configs)
    assert len(configs) == checked and checked > 64
    return configs


WIDE = [(320, 640)]  # images the model keeps as they are: canvas 320x640, 2.34 MiB each as delivered


def _estimates(drawn, table, sizes=WIDE):
    return [estimate_mib(TrialConfig.model_validate(c), table, sizes=sizes) for c in drawn]


def test_every_config_fits_a_large_share(drawn):
    lines = []
    table = _table(base=700, slope=3000)
    check_gpu_memory(drawn, gpu=0.25, cards_mib=[81559], table=table, sizes=WIDE, echo=lines.append)
    estimates = _estimates(drawn, table)
    assert {TrialConfig.model_validate(c).hparams.batch_size for c in drawn} == {2, 4, 8}
    assert lines == [f"GPU memory: about {min(estimates):.0f} to {max(estimates):.0f} MiB per trial, within its "
                     f"{81559 * 0.25:.0f} MiB (resources.gpu 0.25 of a 81559 MiB card, less 0 MiB for the CUDA "
                     "context; estimates measured on NVIDIA A10G, 23028 MiB)"]


def test_configs_over_the_share_are_counted(drawn):
    lines = []
    table = _table(base=700, slope=3000, context=500)
    # 5641 MiB: batch 8 at 320x640 with SGD needs 700 + 3000 * 8 * 0.2048 + 8 * 2.34 = 5634, so only
    # batch 8 with Adam (+72), with crops (the canvas is then 640x640) or with zoom-out goes over
    share = 24564 * 0.25 - 500
    check_gpu_memory(drawn, gpu=0.25, cards_mib=[24564], table=table, sizes=WIDE, echo=lines.append)
    over = [c["hparams"] for c, e in zip(drawn, _estimates(drawn, table), strict=True) if e > share]
    assert over and {h["batch_size"] for h in over} <= {4, 8}
    assert all(h["optimizer"] != "sgd" or h["crop_p"] > 0 or h["zoom_out_p"] > 0 for h in over if h["batch_size"] == 8)
    (line,) = lines
    assert line.startswith(f"GPU memory: {len(over)} of {len(drawn)} checked configs need more than a trial's 5641 MiB "
                           "(resources.gpu 0.25 of a 24564 MiB card, less 500 MiB")
    assert line.endswith("such trials will stop with an out-of-memory error")


def test_a_share_no_config_fits_stops_the_sweep(drawn):
    # the smallest config (batch 2, SGD, no crop or zoom) needs 700 + 3000 * 2 * 0.2048 + 2 * 2.34 = 1933 MiB;
    # a tenth of a 16 GiB card less 500 is 1138
    with pytest.raises(ConfigError, match=r"^resources.gpu: a trial may hold 1138 MiB \(resources.gpu 0.1 of a 16384 "
                                          r"MiB card, less 500 MiB for the CUDA context.*needs about 1933 MiB "
                                          rf"\({MOBILE}, batch_size 2, 320x640, amp, sgd\)\. Raise resources.gpu \(fewer trials per GPU\)"):
        check_gpu_memory(drawn, gpu=0.1, cards_mib=[16384], table=_table(context=500), sizes=WIDE, echo=print)
    # without the context the same share would hold it: the context is what the check takes off
    check_gpu_memory(drawn, gpu=0.12, cards_mib=[16384], table=_table(context=0), sizes=WIDE, echo=lambda _: None)


def test_a_larger_card_in_the_cluster_keeps_the_sweep_going(drawn):
    # no config fits a tenth of the 16 GiB card, but the smallest fits a tenth of the 80 GiB one
    lines = []
    check_gpu_memory(drawn, gpu=0.1, cards_mib=[16384, 81559], table=_table(context=500), sizes=WIDE, echo=lines.append)
    (line,) = lines
    assert line.startswith(f"GPU memory: {len(drawn)} of {len(drawn)} checked configs need more than a trial's 1138 MiB "
                           "on the smallest of the cards (2 seen)")


@pytest.mark.parametrize("table, cards, expected", [
    (None, [24564], "GPU memory: not checked (no measured estimate: benchmarks/gpu.sh writes trainables/gpu_memory.json)"),
    ("fit", [], "GPU memory: not checked (no GPU node's card memory could be read with nvidia-smi)"),
    ("other", [24564], f"GPU memory: no measured estimate for {MOBILE} (amp); those trials are not checked"),
])
def test_what_cannot_be_checked_is_said(drawn, table, cards, expected):
    lines = []
    table = {"fit": _table(), "other": _table(arch="fasterrcnn_resnet50_fpn"), None: None}[table]
    check_gpu_memory(drawn, gpu=0.5, cards_mib=cards, table=table, sizes=WIDE, echo=lines.append)
    assert lines == [expected]


def test_nvidia_smi_output_is_read_per_card():
    assert parse_nvidia_smi("81559\n81559\n") == [81559.0, 81559.0]
    assert parse_nvidia_smi("81559, 529\n") == [81030.0]  # the driver's reserved memory is not the card's to share
    assert parse_nvidia_smi("[N/A]\n40960\n") == [40960.0]  # a MIG-mode card reports no total
    assert parse_nvidia_smi("") == []
