"""Decoding policy: a JPEG cut short is repaired in memory, the same way at build time and in every
trial; an undecodable image is left out and listed; ``strict`` makes both errors; user files are
never changed and PIL's process-wide LOAD_TRUNCATED_IMAGES is never set."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from trainables.data import DetectionDataset, build_manifest, load_image, read_manifest, summarize
from trainables.errors import DataError

REPO = Path(__file__).resolve().parents[3]
TAIL = "JPEG cut short before its end marker, decoded with the marker restored (file unchanged)"
UNDECODABLE = "image that cannot be decoded, left out"


def _voc(root: Path, stem: str) -> None:
    (root / f"{stem}.xml").write_text(
        f"<annotation><filename>{stem}.jpg</filename><size><width>96</width><height>64</height></size>"
        "<object><name>dog</name><bndbox><xmin>4</xmin><ymin>5</ymin><xmax>60</xmax><ymax>50</ymax></bndbox>"
        "</object></annotation>"
    )


@pytest.fixture
def broken(tmp_path) -> Path:
    """Four VOC images: two good, one missing its last 20 bytes, one that is not an image at all."""
    rng = np.random.default_rng(0)
    for stem in ("good_a", "good_b", "cut", "garbage"):
        pixels = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{stem}.jpg", quality=90)
        _voc(tmp_path, stem)
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:-20])  # no end-of-image marker, last scan bytes gone
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8 this was never a JPEG")
    return tmp_path


def _digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("*.jpg"))}


def test_cut_jpeg_is_repaired_and_undecodable_left_out(broken, tmp_path_factory):
    files_before = _digests(broken)
    with pytest.raises(OSError, match="truncated"):  # what a strict decode says about cut.jpg
        Image.open(broken / "cut.jpg").load()
    m = build_manifest(broken, val_fraction=0)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert _digests(broken) == files_before  # the user's files are untouched
    assert [r.file_name for r in m.records()] == ["cut.jpg", "good_a.jpg", "good_b.jpg"]
    assert [r.jpeg_tail_missing for r in m.records()] == [True, False, False]
    s = m.summary
    assert s.images == 3 and s.dropped == 1
    assert s.repairs == {TAIL: 1, UNDECODABLE: 1}
    assert s.listed == {TAIL: ["cut.jpg"], UNDECODABLE: ["garbage.jpg: not a readable image file"]}
    text = summarize(m)
    assert "Images: 3 (train 3, val 0, test 0), 1 left out (listed below)" in text
    assert f"  {TAIL}: 1\n    cut.jpg\n" in text
    assert f"  {UNDECODABLE}: 1\n    garbage.jpg: not a readable image file" in text

    # trials decode it as the build did: the file's bytes plus the end marker, strictly
    path = m.write(tmp_path_factory.mktemp("manifest") / "m.parquet")
    cut = read_manifest(path).records()[0]
    pixels = load_image(cut).numpy()
    expected = np.asarray(
        Image.open(io.BytesIO((broken / "cut.jpg").read_bytes() + b"\xff\xd9")).convert("RGB")
    )
    assert np.array_equal(pixels.transpose(1, 2, 0), expected)
    assert np.array_equal(load_image(cut).numpy(), pixels)
    image, target = DetectionDataset([cut])[0]
    assert tuple(image.shape) == (3, 64, 96) and target["labels"].tolist() == [1]

    # and so does a fresh process, which never imported anything that could flip PIL's flag
    script = (
        "import hashlib, sys\n"
        "from PIL import ImageFile\n"
        "from trainables.data import load_image, read_manifest\n"
        "record = read_manifest(sys.argv[1]).records()[0]\n"
        "print(hashlib.sha256(load_image(record).numpy().tobytes()).hexdigest(), ImageFile.LOAD_TRUNCATED_IMAGES)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env,
                         check=True, timeout=120).stdout.split()  # fmt: skip
    assert out == [hashlib.sha256(pixels.tobytes()).hexdigest(), "False"]


def test_strict_makes_both_errors(broken):
    with pytest.raises(DataError) as info:
        build_manifest(broken, val_fraction=0, strict=True)
    message = str(info.value)
    assert message.startswith("2 problems in dataset")
    assert f"{(broken / 'cut.jpg').resolve()}: image id 1 (cut.jpg): JPEG file is truncated" in message
    assert (
        f"{(broken / 'garbage.jpg').resolve()}: image id 2 (garbage.jpg): not a readable image file"
        in message
    )


def test_jpeg_that_no_marker_can_save_is_left_out(tmp_path):
    rng = np.random.default_rng(1)
    for stem in ("ok", "half"):
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(tmp_path / f"{stem}.jpg")
        _voc(tmp_path, stem)
    data = (tmp_path / "half.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[:200])  # cut inside the headers: nothing to decode
    m = build_manifest(tmp_path, val_fraction=0)
    assert [r.file_name for r in m.records()] == ["ok.jpg"]
    (entry,) = m.summary.listed[UNDECODABLE]
    assert entry.startswith("half.jpg: ")


def test_a_dataset_left_with_nothing_names_what_was_left_out(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"not an image")
    _voc(tmp_path, "a")
    with pytest.raises(DataError) as info:
        build_manifest(tmp_path)
    message = str(info.value)
    assert (
        "0 images but no boxes" in message and f"{UNDECODABLE}: a.jpg: not a readable image file" in message
    )
