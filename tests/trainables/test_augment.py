"""Training and evaluation transforms: exact box geometry, sanitising, negatives, determinism."""

from __future__ import annotations

import pickle

import pytest
import torch
from torchvision import tv_tensors

from trainables.augment import (
    FILL_RGB,
    CanvasScaleJitter,
    build_eval_transforms,
    build_train_transforms,
    describe_transforms,
)
from trainables.config import HParams
from trainables.errors import ConfigError

H, W = 48, 64
BOXES = [[4.0, 6.0, 20.0, 30.0], [30.0, 10.0, 60.0, 40.0], [22.0, 2.0, 34.0, 12.0]]
# every geometric augmentation off; tests switch on what they test
OFF = dict(hflip_p=0.0, vflip_p=0.0, jitter_p=0.0, crop_p=0.0, zoom_out_p=0.0, scale_jitter_p=0.0)
ALL_ON = dict(hflip_p=1.0, vflip_p=1.0, jitter_p=1.0, crop_p=1.0, zoom_out_p=1.0, scale_jitter_p=1.0)


def _sample(boxes=BOXES, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = tv_tensors.Image(torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=g))
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    target = {
        "boxes": tv_tensors.BoundingBoxes(b, format="XYXY", canvas_size=(H, W)),
        "labels": torch.arange(1, len(b) + 1, dtype=torch.int64),
        "image_id": 7,
    }
    return image, target


def _check_valid(image, target):
    """float32 in [0, 1], boxes non-degenerate inside the canvas, one label per box."""
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    boxes, (h, w) = target["boxes"], image.shape[-2:]
    assert tuple(boxes.canvas_size) == (h, w)
    assert len(boxes) == len(target["labels"]) and target["labels"].dtype == torch.int64
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2] - boxes[:, 0] >= 1).all() and (boxes[:, 3] - boxes[:, 1] >= 1).all()
    assert target["image_id"] == 7


def test_horizontal_flip_mirrors_boxes():
    image, target = _sample()
    out, t = build_train_transforms(HParams(**{**OFF, "hflip_p": 1.0}))(image, target)
    b = torch.tensor(BOXES)
    expected = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], dim=1)  # x1' = W - x2
    assert torch.equal(t["boxes"].as_subclass(torch.Tensor), expected)
    assert torch.allclose(out, image.flip(-1).float() / 255)


def test_vertical_flip_mirrors_boxes():
    image, target = _sample()
    out, t = build_train_transforms(HParams(**{**OFF, "vflip_p": 1.0}))(image, target)
    b = torch.tensor(BOXES)
    expected = torch.stack([b[:, 0], H - b[:, 3], b[:, 2], H - b[:, 1]], dim=1)
    assert torch.equal(t["boxes"].as_subclass(torch.Tensor), expected)
    assert torch.allclose(out, image.flip(-2).float() / 255)


@pytest.mark.parametrize("seed", range(3))
def test_zoom_out_shifts_boxes_and_keeps_their_size(seed):
    torch.manual_seed(seed)
    image, target = _sample()
    out, t = build_train_transforms(HParams(**{**OFF, "zoom_out_p": 1.0, "zoom_out_max": 3.0}))(image, target)
    b, nb = torch.tensor(BOXES), t["boxes"].as_subclass(torch.Tensor)
    shift = nb - b
    dx, dy = int(shift[0, 0]), int(shift[0, 1])
    assert torch.equal(shift, torch.tensor([[dx, dy, dx, dy]] * 3, dtype=torch.float32))  # one translation
    assert out.shape[-2] >= H and out.shape[-1] >= W
    assert torch.allclose(
        out[:, dy : dy + H, dx : dx + W], image.float() / 255
    )  # the image sits under its boxes
    if out.shape[-1] > W:
        corner = out[:, 0, 0] if dx > 0 or dy > 0 else out[:, -1, -1]
        assert torch.allclose(corner, torch.tensor(FILL_RGB) / 255)


def test_iou_crop_keeps_boxes_inside_the_smaller_canvas():
    hp = HParams(**{**OFF, "crop_p": 1.0})
    cropped = 0
    for seed in range(12):
        torch.manual_seed(seed)
        out, t = build_train_transforms(hp)(*_sample())
        _check_valid(out, t)
        assert out.shape[-2] <= H and out.shape[-1] <= W
        assert set(t["labels"].tolist()) <= {1, 2, 3}
        cropped += out.shape[-2:] != (H, W)
    assert cropped >= 6  # it keeps the sample whole for only one of its seven options


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_canvas_scale_jitter_rescales_content_not_canvas(scale):
    box = [[24.0, 18.0, 36.0, 30.0]]  # 12 x 12 px around the centre
    whole = 0
    for seed in range(20):
        torch.manual_seed(seed)
        image, target = _sample(box)
        out, t = CanvasScaleJitter((scale, scale))(image, target)
        assert out.shape == image.shape and tuple(t["boxes"].canvas_size) == (H, W)
        x1, y1, x2, y2 = t["boxes"].as_subclass(torch.Tensor)[0].tolist()
        if 0 < x1 and 0 < y1 and x2 < W and y2 < H:  # not cut by the window
            assert (x2 - x1, y2 - y1) == pytest.approx((12 * scale, 12 * scale))
            whole += 1
    assert whole >= 3  # 2x: the window leaves it whole about 3 times in 10


def test_scale_jitter_in_the_pipeline_keeps_the_canvas():
    hp = HParams(**{**OFF, "scale_jitter_p": 1.0, "scale_min": 0.5, "scale_max": 2.0})
    for seed in range(6):
        torch.manual_seed(seed)
        out, t = build_train_transforms(hp)(*_sample())
        _check_valid(out, t)
        assert out.shape[-2:] == (H, W)


def test_colour_jitter_changes_pixels_not_boxes():
    torch.manual_seed(0)
    image, target = _sample()
    out, t = build_train_transforms(HParams(**{**OFF, "jitter_p": 1.0, "brightness": 0.4}))(image, target)
    assert torch.equal(t["boxes"], target["boxes"])
    assert not torch.allclose(out, image.float() / 255)


def test_probability_zero_leaves_sample_untouched():
    image, target = _sample()
    out, t = build_train_transforms(HParams(**OFF))(image, target)
    assert torch.allclose(out, image.float() / 255)
    assert torch.equal(t["boxes"], target["boxes"]) and torch.equal(t["labels"], target["labels"])
    assert describe_transforms(HParams(**OFF)) == [
        "ClampBoundingBoxes",
        "SanitizeBoundingBoxes(min_size=1)",
        "ToDtype(float32, scale=True)",
    ]


def test_sanitising_drops_degenerate_boxes_with_their_labels():
    image, target = _sample([[5, 5, 20, 20], [10, 10, 10, 30], [30, 30, 30.5, 40], [40, 40, 50, 44]])
    _, t = build_train_transforms(HParams(**OFF))(image, target)
    assert t["labels"].tolist() == [1, 4]
    assert t["boxes"].as_subclass(torch.Tensor).tolist() == [[5, 5, 20, 20], [40, 40, 50, 44]]


@pytest.mark.parametrize("seed", range(10))
def test_negatives_go_through_every_transform(seed):
    torch.manual_seed(seed)
    out, t = build_train_transforms(HParams(**ALL_ON))(*_sample([]))
    _check_valid(out, t)
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)


@pytest.mark.parametrize("seed", range(10))
def test_everything_on_gives_valid_float_samples(seed):
    torch.manual_seed(seed)
    _check_valid(*build_train_transforms(HParams(**ALL_ON))(*_sample(seed=seed)))


def test_same_seed_same_sample():
    transforms = build_train_transforms(HParams(**{k: 0.5 for k in ALL_ON}))
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append([transforms(*_sample()) for _ in range(5)])
    for (a_img, a_t), (b_img, b_t) in zip(*runs, strict=True):
        assert torch.equal(a_img, b_img) and torch.equal(a_t["boxes"], b_t["boxes"])
        assert torch.equal(a_t["labels"], b_t["labels"])


def test_eval_transforms_only_convert_dtype():
    image, target = _sample()
    out, t = build_eval_transforms()(image, target)
    assert out.dtype == torch.float32 and torch.allclose(out, image.float() / 255)
    assert torch.equal(t["boxes"], target["boxes"])


def test_describe_lists_enabled_transforms_in_order():
    lines = describe_transforms(HParams(**{**OFF, "hflip_p": 0.5, "crop_p": 0.3, "zoom_out_p": 0.2}))
    assert [line.split("(")[0].split(" ")[0] for line in lines] == [
        "RandomZoomOut",
        "RandomIoUCrop",
        "RandomHorizontalFlip",
        "ClampBoundingBoxes",
        "SanitizeBoundingBoxes",
        "ToDtype",
    ]


@pytest.mark.parametrize(
    "hparams, key",
    [
        (dict(jitter_p=0.5, brightness=0, contrast=0, saturation=0, hue=0), "hparams.jitter_p"),
        (dict(zoom_out_p=0.5, zoom_out_max=1.0), "hparams.zoom_out_max"),
        (dict(scale_jitter_p=0.5, scale_min=1.0, scale_max=1.0), "hparams.scale_min"),
    ],
)
def test_switched_on_but_no_op_is_a_config_error(hparams, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_train_transforms(HParams(**hparams))


def test_pipeline_pickles_for_loader_workers():
    transforms = pickle.loads(pickle.dumps(build_train_transforms(HParams(**ALL_ON))))
    torch.manual_seed(0)
    _check_valid(*transforms(*_sample()))
