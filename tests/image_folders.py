"""Small image folders for tests: colour images whose class sets their colour, and corrupt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("a", "b", "c")
TRAIN_PER_CLASS, TEST_PER_CLASS = 12, 5


def corrupt_file(path: Path) -> Path:
    """Random bytes under an image name."""
    path.write_bytes(np.random.default_rng(1).integers(0, 256, size=500, dtype=np.uint8).tobytes())
    return path


def write_folder(root: Path) -> Path:
    """Colour images whose class sets the mean colour, the first file of train/ and test/ grayscale."""
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for index, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 80, size=(10, 10, 3)) + 80 * np.eye(3, dtype=int)[index]
                Image.fromarray(pixels.astype(np.uint8), "RGB").save(folder / f"img_{i:02d}.png")
        Image.new("L", (10, 10), 100).save(root / split / "a" / "000_gray.png")
    return root
