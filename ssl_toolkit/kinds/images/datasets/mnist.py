"""MNIST and Fashion-MNIST from their IDX files (plain or gzipped), parsed with NumPy."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ssl_toolkit.kinds.images.datasets.errors import DatasetNotFoundError
from ssl_toolkit.kinds.images.datasets.image_tensor_dataset import ImageTensorDataset

SPLITS = ("train", "test")
FILE_PREFIX = {"train": "train", "test": "t10k"}
DEFAULT_ROOT = "data"  # where torchvision's download=True puts them when data.root is unset

FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(digit) for digit in range(10))

# The third byte of an IDX file's magic number names the element type; all are big-endian.
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (gzipped when its name ends in .gz), in its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:  # gzip raises BadGzipFile (an OSError) or EOFError when truncated
        raise ValueError(f"cannot read IDX file {path}: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path} is truncated: its header is incomplete")
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_size != expected:
        raise ValueError(
            f"{path} holds {len(raw) - header_size} bytes of data; its header {shape} says {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape).astype(dtype.newbyteorder("="))


def _candidate_dirs(root: str | None, torchvision_folder: str, default_dirs: tuple[str, ...]) -> list[Path]:
    """Folders that may hold the IDX files: the root itself and torchvision's `{root}/{Folder}/raw`."""
    bases = [Path(root)] if root is not None else [Path(d) for d in default_dirs]
    return [folder for base in bases for folder in (base, base / torchvision_folder / "raw")]


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _download(torchvision_folder: str, root: str) -> None:
    """Both splits through torchvision, which writes `{root}/{torchvision_folder}/raw/`."""
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, torchvision_folder)
    for train in (True, False):
        dataset_class(root, train=train, download=True)


def _load_idx_dataset(
    dataset_name: str,
    torchvision_folder: str,
    classes: tuple[str, ...],
    split: str,
    root: str | None,
    default_dirs: tuple[str, ...],
    download: bool,
    how_to_get: str,
) -> ImageTensorDataset:
    prefix = FILE_PREFIX[split]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    folders = _candidate_dirs(root, torchvision_folder, default_dirs)
    found = _find_in(folders, stems)
    if found is None and download:
        download_root = root if root is not None else DEFAULT_ROOT
        try:
            _download(torchvision_folder, download_root)
        except (OSError, RuntimeError) as error:  # URLError is an OSError
            raise DatasetNotFoundError(
                dataset_name, _searched(folders, stems), how_to_get, reason=f"download failed: {error}"
            ) from None
        folders = _candidate_dirs(download_root, torchvision_folder, default_dirs)
        found = _find_in(folders, stems)
    if found is None:
        raise DatasetNotFoundError(dataset_name, _searched(folders, stems), how_to_get)

    images_path, labels_path = found
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {images.dtype} images {images.shape} and {labels_path} labels "
            f"{labels.shape}; expected uint8 (N, H, W) and (N,)"
        )
    return ImageTensorDataset(
        torch.from_numpy(images).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        classes,
    )


def _find_in(folders: list[Path], stems: tuple[str, str]) -> tuple[Path, Path] | None:
    """The images and labels files from the first folder that holds both."""
    for folder in folders:
        images, labels = (_find_idx(folder, stem) for stem in stems)
        if images is not None and labels is not None:
            return images, labels
    return None


def _searched(folders: list[Path], stems: tuple[str, str]) -> list[str]:
    return [f"{(folder / stem).resolve()}[.gz]" for folder in folders for stem in stems]


def load_mnist(split: str, root: str | None = None, *, download: bool = False) -> ImageTensorDataset:
    """MNIST digits: 60,000 train / 10,000 test images of 1×28×28.

    Reads `{root}/` or `{root}/MNIST/raw/` (torchvision's layout); without root, `data/`.
    """
    return _load_idx_dataset(
        "mnist",
        "MNIST",
        MNIST_CLASSES,
        split,
        root,
        default_dirs=(DEFAULT_ROOT,),
        download=download,
        how_to_get=(
            "set data.root to a folder holding the IDX files (train-images-idx3-ubyte[.gz], "
            "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]), "
            "or set data.download=true on a machine with internet access."
        ),
    )


def load_fashion_mnist(split: str, root: str | None = None, *, download: bool = False) -> ImageTensorDataset:
    """Fashion-MNIST (Zalando): 60,000 train / 10,000 test images of 1×28×28 in 10 clothing classes.

    Reads `{root}/` or `{root}/FashionMNIST/raw/`; without root, the Debian package's
    /usr/share/datasets/fashion-mnist, then `data/`.
    """
    return _load_idx_dataset(
        "fashion_mnist",
        "FashionMNIST",
        FASHION_MNIST_CLASSES,
        split,
        root,
        default_dirs=(FASHION_MNIST_DEBIAN_DIR, DEFAULT_ROOT),
        download=download,
        how_to_get=(
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu; installs "
            f"{FASHION_MNIST_DEBIAN_DIR}), or set data.root to a folder holding the IDX files "
            "(train-images-idx3-ubyte[.gz], ..., t10k-labels-idx1-ubyte[.gz]), "
            "or set data.download=true on a machine with internet access."
        ),
    )
