"""Build ``data/bundled/fashion.npz``: a fixed subset of Fashion-MNIST from Debian's dataset-fashion-mnist.

    apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb pkg
    python -m crossback.data.build_fashion --source pkg/usr/share/datasets/fashion-mnist --out data/bundled/fashion.npz

The subset is the first ``--per-class`` items of every class in the training file's order (no
randomness: the same package gives the same file). Images stay 28x28 uint8 grey.
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (big-endian header: magic 0x0000 08 ndim, then ndim int32 sizes, then uint8 data)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def build(source: Path, out: Path, per_class: int) -> dict:
    images = read_idx(source / "train-images-idx3-ubyte.gz")
    labels = read_idx(source / "train-labels-idx1-ubyte.gz")
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(CLASSES))])
    keep.sort()
    meta = {"source": "Debian dataset-fashion-mnist (Zalando Research, MIT licence)", "file": "train-*-idx*-ubyte.gz",
            "rule": f"first {per_class} items of every class in file order", "classes": list(CLASSES),
            "items": int(len(keep))}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=images[keep], labels=labels[keep].astype(np.int8), index=keep.astype(np.int32),
                        meta_json=np.array(json.dumps(meta)))
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "bundled" / "fashion.npz")
    parser.add_argument("--per-class", type=int, default=300)
    args = parser.parse_args(argv)
    print(json.dumps(build(args.source, args.out, args.per_class)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
