"""Datasets: embedded ones that need no network, and loaders for real dataset folders.

Embedded: scikit-learn's bundled 8×8 digits (vision analogues) and CPython's ``pydoc_data``
topics text (character-level language analogues). Real: CIFAR-10 in torchvision's on-disk
format and ImageNet as an ImageFolder; their root comes from an argument or ``$TRAJLIB_DATA``,
and a missing folder is an error that names the expected layout. Nothing here downloads.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class TensorData:
    """A classification dataset held in memory: x (N, C, H, W) float32, y (N,) int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]


def digits(*, seed: int = 0, test_fraction: float = 0.25) -> TensorData:
    """scikit-learn's 1,797 8×8 digit images, standardised, one fixed split per ``seed``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return TensorData(x[train], y[train], x[test], y[test], num_classes=10)


def pydoc_text() -> str:
    """CPython's bundled documentation topics (about 0.5 MB of English and Python text)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def embedded_inputs() -> dict[str, dict]:
    """The sha256 and size of each embedded data input, as the loaders above read it: the digits
    images and labels (scikit-learn's bundled copy) and the pydoc topics text (UTF-8). Recorded
    in every results JSON: a different scikit-learn or CPython release may ship different bytes."""
    import hashlib

    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, target = np.ascontiguousarray(bunch.images), np.ascontiguousarray(bunch.target)
    text = pydoc_text().encode()
    digest = hashlib.sha256(images.tobytes())
    digest.update(target.astype(np.int64).tobytes())
    return {"digits": {"sha256": digest.hexdigest(), "shape": list(images.shape)},
            "pydoc_topics": {"sha256": hashlib.sha256(text).hexdigest(), "bytes": len(text)}}


@dataclass
class CharCorpus:
    """A character-level corpus: ``ids`` int64 (N,), split into train and held-out tails."""

    train: torch.Tensor
    valid: torch.Tensor
    vocab: list[str]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def char_corpus(text: str | None = None, *, valid_fraction: float = 0.05) -> CharCorpus:
    """Encode ``text`` (default :func:`pydoc_text`) as character ids; the last part is held out."""
    text = pydoc_text() if text is None else text
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor(np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text)))
    n_valid = int(len(ids) * valid_fraction)
    return CharCorpus(ids[:-n_valid], ids[-n_valid:], vocab)


def data_root(root: str | Path | None, name: str, layout: str) -> Path:
    """Resolve a dataset folder: ``root``, else ``$TRAJLIB_DATA/name``; error naming the layout."""
    if root is None:
        base = os.environ.get("TRAJLIB_DATA")
        if base is None:
            raise FileNotFoundError(
                f"{name}: no data folder given and TRAJLIB_DATA is unset. Put the dataset at "
                f"$TRAJLIB_DATA/{name} with this layout:\n{layout}"
            )
        root = Path(base) / name
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: {root} does not exist. Expected layout:\n{layout}")
    return root


CIFAR10_LAYOUT = """  <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
  (torchvision's CIFAR10 format, e.g. the extracted cifar-10-python.tar.gz)"""

IMAGENET_LAYOUT = """  <root>/train/<wnid>/*.JPEG   and   <root>/val/<wnid>/*.JPEG
  (one folder per class, as torchvision.datasets.ImageFolder reads)"""


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's batch files (dicts of bytes, lists and numpy arrays) and nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch file")


class CIFAR10(torch.utils.data.Dataset):
    """CIFAR-10 in torchvision's on-disk format (``cifar-10-batches-py``), read with a
    restricted unpickler; images (3, 32, 32) float32 after ``transform``."""

    def __init__(self, root: Path, *, train: bool, transform=None):
        folder = Path(root) / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        xs, ys = [], []
        for name in names:
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(f"cifar10: {path} is missing. Expected layout:\n{CIFAR10_LAYOUT}")
            with open(path, "rb") as f:
                try:
                    batch = _SafeUnpickler(f, encoding="latin1").load()
                except (pickle.UnpicklingError, EOFError, ValueError) as exc:
                    raise ValueError(f"cifar10: {path} is not a CIFAR-10 batch file ({exc})") from exc
            batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
            xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.extend(int(y) for y in batch["labels"])
        self.images = np.concatenate(xs).transpose(0, 2, 3, 1)  # (N, 32, 32, 3) uint8, as PIL expects
        self.targets = ys
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return (self.transform(img) if self.transform else img), self.targets[i]


def cifar10(root: str | Path | None = None, *, train: bool = True, augment: bool | None = None):
    """CIFAR-10 from ``root`` (or ``$TRAJLIB_DATA/cifar10``) as a dataset of (image, label).

    Training data gets the standard crop-and-flip augmentation unless ``augment=False``.
    """
    from torchvision import transforms as tf

    root = data_root(root, "cifar10", CIFAR10_LAYOUT)
    if not (root / "cifar-10-batches-py").is_dir():
        raise FileNotFoundError(f"cifar10: {root} lacks cifar-10-batches-py/. Expected layout:\n{CIFAR10_LAYOUT}")
    norm = tf.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    steps = [tf.RandomCrop(32, padding=4), tf.RandomHorizontalFlip()] if (train if augment is None else augment) else []
    return CIFAR10(root, train=train, transform=tf.Compose(steps + [tf.ToTensor(), norm]))


def imagenet(root: str | Path | None = None, *, split: str = "train", size: int = 224):
    """ImageNet (or any ImageFolder tree) from ``root`` (or ``$TRAJLIB_DATA/imagenet``)."""
    import torchvision
    from torchvision import transforms as tf

    root = data_root(root, "imagenet", IMAGENET_LAYOUT)
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"imagenet: {folder} does not exist. Expected layout:\n{IMAGENET_LAYOUT}")
    norm = tf.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    if split == "train":
        steps = [tf.RandomResizedCrop(size), tf.RandomHorizontalFlip()]
    else:
        steps = [tf.Resize(int(size * 256 / 224)), tf.CenterCrop(size)]
    return torchvision.datasets.ImageFolder(str(folder), transform=tf.Compose(steps + [tf.ToTensor(), norm]))
