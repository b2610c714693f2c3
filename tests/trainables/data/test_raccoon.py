"""The real labelImg dataset in ../shared/data/raccoon: 200 images, 217 raccoon boxes."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainables.data import DetectionDataset, build_manifest, read_manifest, summarize

RACCOON = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "raccoon"


@pytest.fixture(scope="module")
def manifest():
    if not RACCOON.is_dir():
        pytest.skip(f"raccoon dataset not found at {RACCOON}")
    return build_manifest(RACCOON)


def test_raccoon_counts(manifest):
    s = manifest.summary
    assert manifest.format == "voc" and manifest.class_names == ["raccoon"]
    assert s.images == 200 and s.boxes_per_class == {"raccoon": 217} and s.negatives == 0
    assert s.images_per_split == {"train": 160, "val": 40}
    assert s.repairs == {"image converted to RGB from mode L": 3}
    assert sum(s.box_sizes["raccoon"].values()) == 217


def test_raccoon_summary_text(manifest):
    text = summarize(manifest)
    assert "Images: 200 (train 160, val 40, test 0)" in text
    assert any(line.split()[:4] == ["1", "1", "raccoon", "217"] for line in text.splitlines())


def test_raccoon_first_record_matches_its_xml(manifest, tmp_path):
    loaded = read_manifest(manifest.write(tmp_path / "raccoon.parquet"))
    first = loaded.records()[0]  # raccoon-1.xml sorts first
    assert (first.image_id, first.file_name, first.width, first.height) == (1, "raccoon-1.jpg", 650, 417)
    assert first.boxes.tolist() == [[81, 88, 522, 408]]
    image, target = DetectionDataset([first])[0]
    assert tuple(image.shape) == (3, 417, 650) and target["labels"].tolist() == [1]
