"""Writers of small on-disk datasets for the tests: IDX files (MNIST layout) and image folders."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

IDX_TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write `array` as an IDX file (big-endian), gzipped when `compress`; returns the path written."""
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, IDX_TYPE_CODES[big_endian.dtype], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + big_endian.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_mnist_split(
    folder: Path, prefix: str, num_images: int, size: tuple[int, int], compress: bool, seed: int
):
    """Random images (N, H, W) and labels 0..9 as `{prefix}-images-idx3-ubyte` / `-labels-idx1-ubyte`."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num_images, *size), dtype=np.uint8)
    labels = (np.arange(num_images) % 10).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return images, labels


def _solid(mode: str, size: tuple[int, int], value) -> Image.Image:
    return Image.new(mode, size, value)


def write_image_folder(root: Path, colour: bool, split_names=("train", "test"), per_class: int = 3) -> Path:
    """Three classes of PNG and JPEG images of varied sizes, in `colour` (RGB) or grayscale (L).

    The colour variant mixes in a grayscale, an RGBA, a palette and a BMP image; the grayscale
    variant a colour and a 16-bit image. Both hold a text file and a hidden file that must be ignored.
    """
    rng = np.random.default_rng(0)
    for split in split_names:
        for class_index, name in enumerate(("apple", "banana", "cherry")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                size = (12 + 2 * i, 10 + class_index)
                if colour:
                    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                    image = Image.fromarray(pixels, "RGB")
                else:
                    pixels = rng.integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
                    image = Image.fromarray(pixels, "L")
                image.save(folder / f"img_{i}.{'jpg' if i % 2 else 'png'}")
            (folder / "notes.txt").write_text("not an image")
            (folder / ".hidden.png").write_bytes(b"ignored")
        odd = root / split / "banana"
        if colour:
            _solid("L", (9, 9), 120).save(odd / "z_gray.png")
            _solid("RGBA", (9, 9), (10, 20, 30, 128)).save(odd / "z_rgba.png")
            _solid("RGB", (9, 9), (200, 0, 0)).quantize(colors=2).save(odd / "z_palette.png")
            _solid("RGB", (9, 9), (0, 200, 0)).save(odd / "z_bitmap.BMP")
        else:
            _solid("RGB", (9, 9), (200, 100, 0)).save(odd / "z_colour.png")
            Image.fromarray(np.full((9, 9), 40000, dtype=np.uint16)).save(odd / "z_16bit.png")
    return root


def corrupt_file(path: Path) -> Path:
    """Random bytes under an image name."""
    path.write_bytes(np.random.default_rng(1).integers(0, 256, size=500, dtype=np.uint8).tobytes())
    return path
