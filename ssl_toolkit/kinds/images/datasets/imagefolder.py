"""Image files in class folders (`{root}/train/<class>/*`, `{root}/test/<class>/*`), decoded lazily.

Only the file list lives in memory, so ImageNet-sized folders work. A corrupt or unreadable file never
stops a run: it is reported once per process and, in training, the next readable image takes its place
(evaluation asks `load_readable` instead and leaves it out). Every split has the same channels: 3 when any
image file of any split has colour, 1 when all are grayscale, unless the caller forces them.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import rgb_to_grayscale, to_dtype

from ssl_toolkit.kinds.images.datasets.errors import (
    DatasetNotFoundError,
    NoReadableImagesError,
    SkippedFolderLinkWarning,
    UndecodableImageError,
    UnreadableImageWarning,
)
from ssl_toolkit.kinds.images.datasets.image_dataset import ImageDataset, Transform

SPLITS = ("train", "test")
SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}  # val/ is read when test/ is absent
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff"}
)
GRAYSCALE_PIL_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# PIL's convert("L") clips these at 255 instead of scaling them; "I" holds 16-bit PGM and PNG files too.
SIXTEEN_BIT_PIL_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
READ_MODES = {None: ImageReadMode.UNCHANGED, 1: ImageReadMode.GRAY, 3: ImageReadMode.RGB}
LAYOUT = (
    "set data.root to a folder laid out as {root}/train/<class>/<image> and {root}/test/<class>/<image> "
    "(or {root}/val/<class>/<image>); class indices follow the sorted class folder names, "
    f"and image files end in one of: {', '.join(sorted(IMAGE_EXTENSIONS))}."
)


def _to_channels(image: torch.Tensor, channels: int | None) -> torch.Tensor:
    """uint8 (C, H, W) with C = `channels`, or with its natural 1 or 3 channels when `channels` is None."""
    if image.ndim == 4:  # an animated GIF decodes to (frames, C, H, W): keep the first frame
        image = image[0]
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = to_dtype(image, torch.uint8, scale=True)
    if image.shape[0] in (2, 4):  # drop the alpha channel
        image = image[:-1]
    target = channels if channels is not None else image.shape[0]
    if image.shape[0] == target:
        return image
    if target == 1:
        return rgb_to_grayscale(image)
    return image.expand(3, -1, -1).contiguous()


def _header_has_colour(source: str | Path | io.BytesIO) -> bool | None:
    """Whether an image file has colour, from its header alone (None when PIL cannot open it).

    PIL's open is lazy: it reads the header, not the pixels. Palette images count as colour.
    """
    from PIL import Image

    try:
        with Image.open(source) as image:
            return image.mode not in GRAYSCALE_PIL_MODES
    except Exception:  # an unreadable file decides nothing here; decoding reports it
        return None


def channels_of_files(paths: Iterable[str], where: str | Path) -> int:
    """3 when any of the image files `paths` has colour (the scan stops at the first), 1 when all are
    grayscale; only file headers are read.

    Raises:
        NoReadableImagesError: PIL can open none of them.
    """
    count = opened = 0
    for path in paths:
        count += 1
        colour = _header_has_colour(path)
        if colour:
            return 3
        opened += colour is not None
    if not opened:
        raise NoReadableImagesError(f"none of the {count} images under {where} can be read")
    return 1


def _decode_with_pil(encoded: bytes, channels: int | None) -> torch.Tensor:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(encoded)) as opened:
        pil_image = ImageOps.exif_transpose(opened)
        if channels is None:
            channels = 1 if pil_image.mode in GRAYSCALE_PIL_MODES else 3
        if pil_image.mode in SIXTEEN_BIT_PIL_MODES:
            deep = torch.from_numpy(np.asarray(pil_image).clip(0, 65535).astype(np.uint16))
            gray = to_dtype(deep, torch.uint8, scale=True)[None]
            return gray if channels == 1 else gray.expand(3, -1, -1).contiguous()
        pixels = np.asarray(pil_image.convert("L" if channels == 1 else "RGB"))
    return torch.from_numpy(pixels.copy()).reshape(*pixels.shape[:2], channels).permute(2, 0, 1).contiguous()


def _first_sentence(error: Exception) -> str:
    """The gist of a decoder's message, without C++ source locations or object addresses."""
    message = re.sub(r"^.*?\.cpp:\d+,\s*", "", str(error).strip().splitlines()[-1])
    message = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", message)
    return message.split(". ")[0]


def decode_image_file(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """The image at `path` as uint8 (C, H, W) with `channels` channels (its natural 1 or 3 when None).

    torchvision decodes JPEG, PNG, GIF and WebP; PIL decodes the rest (BMP, TIFF, PPM, ...).

    Raises:
        UndecodableImageError: Neither decoder can read the bytes.
        OSError: The file cannot be read.
    """
    encoded = Path(path).read_bytes()
    if not encoded:
        raise UndecodableImageError("empty file")
    if channels is None:
        # From the header, since torchvision's "unchanged" mode gives a palette PNG's indices, not colours.
        colour = _header_has_colour(io.BytesIO(encoded))
        channels = None if colour is None else 3 if colour else 1
    try:
        image = decode_image(
            torch.frombuffer(bytearray(encoded), dtype=torch.uint8),
            mode=READ_MODES[channels],
            apply_exif_orientation=True,
        )
    except RuntimeError as torchvision_error:
        try:
            image = _decode_with_pil(encoded, channels)
        except Exception as pil_error:
            raise UndecodableImageError(
                f"torchvision: {_first_sentence(torchvision_error)}; PIL: {_first_sentence(pil_error)}"
            ) from None
    return _to_channels(image, channels)


def append_line(log_path: str | Path, line: str) -> None:
    """Append one line with a single O_APPEND write, so several processes can share the file."""
    descriptor = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, os.fsencode(line) + b"\n")
    finally:
        os.close(descriptor)


class ImageFolderDataset(ImageDataset):
    """Image files with class targets, decoded in `__getitem__`; all images get the same channel count.

    Args:
        split_dir: The folder that holds the class folders.
        relative_paths: Image paths relative to `split_dir`, one per item.
        targets: Class index of each item (N,).
        classes: Class names, in index order.
        channels: 1 or 3; None decides from these files' headers (3 when any has colour, else 1).
        unreadable_log: File to which the path of every unreadable image is appended.
        transform: Applied to each uint8 (C, H, W) image.

    Attributes:
        unreadable: Path → reason of each unreadable file met by this process (each DataLoader worker
            has its own).
    """

    def __init__(
        self,
        split_dir: str | Path,
        relative_paths: Sequence[str],
        targets: torch.Tensor,
        classes: Sequence[str],
        *,
        channels: int | None = None,
        unreadable_log: str | Path | None = None,
        transform: Transform | None = None,
    ):
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {channels}")
        if len(relative_paths) != len(targets):
            raise ValueError(f"{len(relative_paths)} paths but {len(targets)} targets")
        self.split_dir = str(split_dir)
        # One NumPy bytes array rather than a list of str: forked DataLoader workers then share it
        # without copy-on-write page duplication from reference counting.
        self.relative_paths = np.array([os.fsencode(path) for path in relative_paths], dtype=np.bytes_)
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.classes = list(classes)
        self.transform = transform
        self.unreadable: dict[str, str] = {}
        self.unreadable_log = str(unreadable_log) if unreadable_log is not None else None
        if self.unreadable_log is not None:
            Path(self.unreadable_log).parent.mkdir(parents=True, exist_ok=True)
        if channels is None:
            channels = channels_of_files((self.path(i) for i in range(len(self))), self.split_dir)
        self._channels = channels

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def num_unreadable(self) -> int:
        """How many distinct unreadable files this process has met."""
        return len(self.unreadable)

    def path(self, index: int) -> str:
        return os.path.join(self.split_dir, os.fsdecode(self.relative_paths[index]))

    def __len__(self) -> int:
        return len(self.relative_paths)

    def class_location(self, class_index: int) -> str:
        return os.path.join(self.split_dir, self.classes[class_index])

    def load_image(self, index: int) -> tuple[torch.Tensor, int]:
        """Item `index`, or the next readable one (wrapping around) when its file cannot be decoded."""
        self._check_index(index)
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            image = self._try_decode(candidate, self._channels)
            if image is not None:
                return image, int(self.targets[candidate])
        raise NoReadableImagesError(f"none of the {len(self)} images under {self.split_dir} can be read")

    def load_readable(self, index: int) -> tuple[torch.Tensor | None, int]:
        """Item `index` itself: its image (None when its file cannot be decoded) and its own target."""
        self._check_index(index)
        return self._try_decode(index, self._channels), int(self.targets[index])

    def _check_index(self, index: int) -> None:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")

    def _try_decode(self, index: int, channels: int | None) -> torch.Tensor | None:
        path = self.path(index)
        if path in self.unreadable:
            return None
        try:
            return decode_image_file(path, channels)
        except Exception as error:  # any failure of one file must not stop a run: report it and move on
            reason = (
                str(error) if isinstance(error, UndecodableImageError) else f"{type(error).__name__}: {error}"
            )
            self._record_unreadable(path, reason)
            return None

    def _record_unreadable(self, path: str, reason: str) -> None:
        self.unreadable[path] = reason
        warnings.warn(f"skipping unreadable image {path} ({reason})", UnreadableImageWarning, stacklevel=2)
        if self.unreadable_log is not None:
            append_line(self.unreadable_log, path)


def _split_dir(root: Path, split: str) -> tuple[Path | None, list[Path]]:
    """The folder of `split` (None when absent) and every folder looked at."""
    candidates = [root / name for name in SPLIT_FOLDERS[split]]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate, candidates
    return None, candidates


def _class_names(folder: Path) -> list[str]:
    return sorted(
        entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith(".")
    )


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _image_files(class_dir: Path, dataset_root: str, walked: set[str]) -> list[str]:
    """Image files under one class folder (recursively), relative to its parent, in sorted order.

    A folder link is followed at most once, and never back into the dataset (that would list images twice
    or under another class) nor up to an ancestor (a loop). `walked` holds the real paths of the folders
    already walked in this split and grows with this class's.
    """
    class_real = os.path.realpath(class_dir)
    walked.add(class_real)
    found = []
    for directory, subdirectories, filenames in os.walk(class_dir, followlinks=True):
        kept = []
        for name in sorted(subdirectories):  # os.walk descends in this order: sorting keeps the file order
            path = os.path.join(directory, name)
            real = os.path.realpath(path)
            is_link = os.path.islink(path)
            if real in walked:
                reason = "its target is listed already"
            elif is_link and (_is_within(real, dataset_root) or _is_within(class_real, real)):
                reason = "it leads back into the dataset"
            else:
                walked.add(real)
                kept.append(name)
                continue
            if is_link:
                warnings.warn(
                    f"not following the folder link {path} → {real}: {reason}",
                    SkippedFolderLinkWarning,
                    stacklevel=2,
                )
        subdirectories[:] = kept
        relative_dir = os.path.relpath(directory, class_dir.parent)
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(relative_dir, name))
    return found


def _split_files(root: Path, split_dir: Path, classes: Sequence[str]) -> tuple[list[str], list[int]]:
    """Image paths relative to `split_dir`, and their class indices, over the class folders it has."""
    dataset_root, walked = os.path.realpath(root), set()
    relative_paths, targets = [], []
    for class_index, name in enumerate(classes):
        if (split_dir / name).is_dir():
            files = _image_files(split_dir / name, dataset_root, walked)
            relative_paths += files
            targets += [class_index] * len(files)
    return relative_paths, targets


def _other_splits_files(root: Path, split_dir: Path) -> Iterator[str]:
    """Paths of the image files of every split folder of `root` besides `split_dir`, listed as needed."""
    for split in SPLITS:
        other, _ = _split_dir(root, split)
        if other is not None and other != split_dir:
            relative_paths, _ = _split_files(root, other, _class_names(other))
            yield from (os.path.join(other, path) for path in relative_paths)


def load_imagefolder(
    split: str,
    root: str | None = None,
    *,
    unreadable_log: str | Path | None = None,
    channels: int | None = None,
) -> ImageFolderDataset:
    """The `train` or `test` (test/, else val/) split of an image folder; classes come from train/.

    Args:
        split: "train" or "test".
        root: The folder holding train/ and test/ (or val/).
        unreadable_log: File to which the path of every unreadable image is appended.
        channels: Force 1 or 3 channels; None: 3 when any image of any split has colour (read from file
            headers, stopping at the first colour image), 1 when every image is grayscale, so that every
            split of a dataset gets the same.
    """
    if root is None:
        raise DatasetNotFoundError("imagefolder", [], LAYOUT, reason="data.root is not set")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels}")
    root_path = Path(root).expanduser()
    split_dir, searched = _split_dir(root_path, split)
    if split_dir is None:
        raise DatasetNotFoundError("imagefolder", [path.resolve() for path in searched], LAYOUT)
    # Class indices come from train/ so that both splits agree even when test/ lacks a class.
    train_dir, _ = _split_dir(root_path, "train")
    classes = _class_names(train_dir if train_dir is not None else split_dir)
    unknown = sorted(set(_class_names(split_dir)) - set(classes))
    if unknown:
        raise ValueError(f"{split_dir} has class folders that {train_dir} lacks: {', '.join(unknown)}")

    relative_paths, targets = _split_files(root_path, split_dir, classes)
    if not relative_paths:
        raise DatasetNotFoundError(
            "imagefolder",
            [split_dir.resolve()],
            LAYOUT,
            reason=f"no image files in class folders of {split_dir}",
        )
    if channels is None:
        this_split = (os.path.join(split_dir, path) for path in relative_paths)
        everything = itertools.chain(this_split, _other_splits_files(root_path, split_dir))
        channels = channels_of_files(everything, root_path)
    return ImageFolderDataset(
        split_dir,
        relative_paths,
        torch.tensor(targets, dtype=torch.long),
        classes,
        channels=channels,
        unreadable_log=unreadable_log,
    )
