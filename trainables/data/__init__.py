"""The dataset layer: COCO, Pascal VOC and YOLO in, one checked Parquet manifest out, torch datasets on top.

``build_manifest`` parses, checks, repairs and splits a dataset once per sweep; trials load it
with ``read_manifest`` and wrap its records in ``DetectionDataset``.
"""

from trainables.data.dataset import DetectionDataset, collate_detection, load_image
from trainables.data.demo import DEMO_CATEGORIES, make_demo_dataset
from trainables.data.manifest import Manifest, build_manifest, read_manifest
from trainables.data.records import CONFIG_KEYS, SUMMARY_FLAGS, ClassInfo, ImageRecord, SettingNames
from trainables.data.summary import DataSummary, summarize

__all__ = [
    "CONFIG_KEYS",
    "ClassInfo",
    "DEMO_CATEGORIES",
    "DataSummary",
    "DetectionDataset",
    "ImageRecord",
    "SUMMARY_FLAGS",
    "SettingNames",
    "Manifest",
    "build_manifest",
    "collate_detection",
    "load_image",
    "make_demo_dataset",
    "read_manifest",
    "summarize",
]
