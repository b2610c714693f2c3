"""The torch side: manifest records as (image, target) pairs for torchvision detection models."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import torch
from PIL import ImageOps
from pyarrow import fs as pafs
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from trainables.data.images import open_image
from trainables.data.records import ImageRecord
from trainables.errors import DataError

__all__ = ["DetectionDataset", "collate_detection", "load_image"]


def _open_uri(record: ImageRecord) -> BinaryIO:
    """The bytes of an image whose path is a URI (s3://, gs://, file://, ...), through pyarrow's filesystems.

    Read whole into memory: images are small, and PIL seeks back and forth while decoding, which
    costs a round trip per seek on an object store. Credentials come from the node's environment
    (for S3: AWS_* variables, ~/.aws, or the instance profile).
    """
    try:
        filesystem, path = pafs.FileSystem.from_uri(record.path)
        with filesystem.open_input_file(path) as src:
            return io.BytesIO(src.read())
    except (OSError, ValueError) as exc:  # pyarrow raises FileNotFoundError, OSError or ArrowInvalid
        raise DataError(f"{record.path}: image id {record.image_id}: cannot read the image: {exc}") from None


def load_image(record: ImageRecord) -> tv_tensors.Image:
    """Decode a record's image as displayed (EXIF orientation applied), RGB, uint8 (3, H, W).

    ``record.path`` is a local path, or a URI (it contains ``://``) read through ``pyarrow.fs``.
    A JPEG the manifest marks ``jpeg_tail_missing`` decodes as it did when the manifest was built
    (``trainables.data.images.open_image``).
    """
    source = _open_uri(record) if "://" in record.path else record.path
    with open_image(source, jpeg_tail_missing=record.jpeg_tail_missing) as raw:
        image = ImageOps.exif_transpose(raw).convert("RGB")
    if image.size != (record.width, record.height):
        raise DataError(
            f"{record.path}: image id {record.image_id}: size {image.size[0]}x{image.size[1]} differs "
            f"from the manifest's {record.width}x{record.height}; the file changed, rebuild the manifest"
        )
    return tv_tensors.Image(F.pil_to_tensor(image))


class DetectionDataset(Dataset):
    """Images and training targets for a list of records.

    The target holds the repaired training boxes (clipped to the image, zero-size ones dropped),
    crowd regions left out and VOC ``difficult`` objects kept; evaluation reads the record's
    annotations as annotated (``eval_*``) instead:
    ``{"boxes": BoundingBoxes XYXY float32, "labels": int64 (N,), "image_id": int}``. With
    ``transforms`` (torchvision.transforms.v2 style) the pair is passed through
    ``transforms(image, target)`` and its result returned. With ``cache`` (a filled
    ``DecodedImageCache``) images it holds are not decoded again; the transforms run as before.
    The torch RNG of the transforms is seeded from (``seed``, epoch, image id); the loop calls
    :meth:`set_epoch` before each pass.
    """

    def __init__(self, records: Sequence[ImageRecord], transforms: Callable | None = None, cache: Any = None, *,
                 seed: int = 0) -> None:
        self.records = list(records)
        self.transforms = transforms
        self.cache = cache
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass belongs to: part of every sample's augmentation seed."""
        self.epoch = int(epoch)

    def sample_seed(self, index: int) -> int:
        """The torch seed of sample ``index`` this epoch: a hash of (seed, epoch, image id), in [0, 2**63)."""
        key = f"{self.seed}:{self.epoch}:{self.records[index].image_id}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        record = self.records[index]
        image = self.cache.get(record.image_id) if self.cache is not None else None
        if image is None:
            image = load_image(record)
        keep = record.train_mask
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(record.boxes[keep].copy()).to(torch.float32).reshape(-1, 4),
                format="XYXY",
                canvas_size=(record.height, record.width),
            ),
            "labels": torch.from_numpy(record.labels[keep].copy()).to(torch.int64),
            "image_id": int(record.image_id),
        }
        if self.transforms is not None:
            # torchvision v2 transforms draw from the global torch RNG. Seeding it per sample (inside a
            # fork, so the caller's RNG is untouched) makes augmentation the same whichever process
            # decodes the sample: 0 or N loader workers give the same batches.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.sample_seed(index))
                return self.transforms(image, target)
        return image, target


def collate_detection(batch: Sequence[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """Detection batches stay lists: images differ in size and targets in box count."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets
