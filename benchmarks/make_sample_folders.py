"""Write two image folders from data that scikit-learn ships (no download), to try ``--dataset folder:PATH``.

- ``OUT/digits/<0-9>/*.png``: the 1,797 handwritten digits of ``sklearn.datasets.load_digits``
  (8 x 8, 17 grey levels, scaled to 0-255), one sub-folder per digit: grey, labelled, not MNIST;
- ``OUT/tiles/<china|flower>/*.png``: 32 x 32 colour tiles cut every 16 pixels from the two
  photographs of ``sklearn.datasets.load_sample_images``: colour, two classes.

scikit-learn is not a dependency of pyro-vae: ``pip install scikit-learn`` first.

    python benchmarks/make_sample_folders.py /tmp/sample-folders
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(out: Path) -> int:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image * 255 / 16).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return len(digits.images)


def write_tiles(out: Path, side: int = 32, stride: int = 16) -> int:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    count = 0
    for name, photo in zip(photos.filenames, photos.images):
        folder = out / Path(name).stem
        folder.mkdir(parents=True, exist_ok=True)
        for r in range(0, photo.shape[0] - side + 1, stride):
            for c in range(0, photo.shape[1] - side + 1, stride):
                Image.fromarray(photo[r: r + side, c: c + side]).save(folder / f"{r:03d}-{c:03d}.png")
                count += 1
    return count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    args = p.parse_args()
    print(f"{write_digits(args.out / 'digits')} digits in {args.out / 'digits'}")
    print(f"{write_tiles(args.out / 'tiles')} colour tiles in {args.out / 'tiles'}")


if __name__ == "__main__":
    main()
