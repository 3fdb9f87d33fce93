"""Data sets for the unlearning engine, as float32 image tensors in [0, 1].

`load_dataset(spec)` returns a `Dataset`: `x_*` float32 [N, C, H, W] with values in [0, 1] and
`y_*` int64 [N] with labels 0..num_classes-1. Specs:

- ``"digits"`` (the embedded default): scikit-learn's 1,797 real 8x8 digit images, pixels / 16,
  shape [N, 1, 8, 8]; no download. Split into train and test by a seeded stratified split.
- ``"npz:PATH"``: a NumPy .npz archive with arrays ``x`` ([N, H, W] or [N, C, H, W]; uint8 is
  divided by 255, float must already lie in [0, 1]) and ``y`` ([N] non-negative integer labels),
  and optionally ``x_test`` / ``y_test``; without them a seeded stratified split is made.
  ``num_classes`` is the largest label (train and test) plus one; a label beyond MAX_CLASSES - 1
  or a single class is refused (`check_labels`, which runs before training, also wants every class
  0..C-1 in the training set).
- ``"mnist"``, ``"cifar10"``, ``"cifar100"``, ``"svhn"``: the official train / test sets, read
  from `root` in the formats their authors distribute (MNIST idx files, CIFAR python pickles,
  SVHN cropped-digit .mat files). `root` defaults to ``$INTUNLEARN_DATA`` or
  ``~/.cache/intunlearn``. With ``download=True`` missing files are fetched from the official
  hosts into `root` and checked against their published MD5 sums.

Large sets are read as uint8 and converted to float32 once, with no per-sample Python loop.
Bad input raises ValueError (or FileNotFoundError for missing files) naming the file, the array
and what was expected; nothing is silently clipped or cast.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from intunlearn import _checks as check

__all__ = ["Dataset", "MAX_CLASSES", "SPECS", "check_labels", "default_root", "load_dataset"]

log = logging.getLogger(__name__)

#: The most classes a data set may have: a larger label is a damaged or foreign file, not a task
#: (a label of 2**40 would otherwise size a model's output layer to it).
MAX_CLASSES = 100_000

#: The valid dataset specs (``npz:PATH`` takes a path after the colon).
SPECS = ("digits", "mnist", "cifar10", "cifar100", "svhn", "npz:PATH")


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Train and test images as float32 [N, C, H, W] in [0, 1], labels int64 [N]."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.dim() != 4:
                raise ValueError(f"Dataset {self.name!r}: x_{split} must be a float32 tensor "
                                 f"[N, C, H, W], got {_describe(x)}")
            if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
                raise ValueError(f"Dataset {self.name!r}: y_{split} must be an int64 tensor [N], "
                                 f"got {_describe(y)}")
            if len(x) != len(y):
                raise ValueError(f"Dataset {self.name!r}: x_{split} has {len(x)} samples but "
                                 f"y_{split} has {len(y)}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"Dataset {self.name!r}: train images are "
                             f"{tuple(self.x_train.shape[1:])} "
                             f"but test images are {tuple(self.x_test.shape[1:])}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) \
                or self.num_classes < 1:
            raise ValueError(f"Dataset {self.name!r}: num_classes must be a positive int, "
                             f"got {self.num_classes!r}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes})")


def default_root() -> Path:
    """``$INTUNLEARN_DATA`` if set, else ``~/.cache/intunlearn``."""
    env = os.environ.get("INTUNLEARN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "intunlearn"


def load_dataset(spec: str, *, root: str | os.PathLike | None = None, seed: int = 0,
                 download: bool = False, test_fraction: float = 0.25) -> Dataset:
    """Load a data set by spec: "digits", "npz:PATH", "mnist", "cifar10", "cifar100" or "svhn".

    `seed` and `test_fraction` define the stratified train/test split of "digits" and of .npz
    files without x_test / y_test (scikit-learn's train_test_split with stratify and
    random_state=seed); the other sets come with their official test split and ignore both.
    `root` and `download` apply to mnist, cifar10, cifar100 and svhn.
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a str, got {type(spec).__name__}")
    check.seed(seed)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be a number strictly between 0 and 1, "
                         f"got {test_fraction!r}")
    if not isinstance(download, bool):
        raise TypeError(f"download must be a bool, got {type(download).__name__}")
    spec = spec.strip()
    key = spec.lower()
    if key.startswith("npz:"):
        path = spec[4:].strip()
        if not path:
            raise ValueError("spec 'npz:PATH' needs a path after the colon, e.g. 'npz:data.npz'")
        return _load_npz(spec, Path(path).expanduser(), int(seed), float(test_fraction))
    if key == "digits":
        return _load_digits(int(seed), float(test_fraction))
    loaders = {"mnist": _load_mnist, "cifar10": _load_cifar10, "cifar100": _load_cifar100,
               "svhn": _load_svhn}
    if key not in loaders:
        raise ValueError(f"unknown dataset spec {spec!r}; valid specs: {', '.join(SPECS)}")
    base = Path(root).expanduser() if root is not None else default_root()
    return loaders[key](base, download)


# --------------------------------------------------------------------------------------------
# helpers


def _describe(value) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"{type(value).__name__} of dtype {value.dtype} and shape {tuple(value.shape)}"
    return type(value).__name__


def _uint8_to_float(x: np.ndarray) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 / 255, one vectorized conversion."""
    out = np.ascontiguousarray(x).astype(np.float32)
    out /= np.float32(255.0)
    return torch.from_numpy(out)


def _labels_tensor(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))


def _stratified_split(y: np.ndarray, seed: int, test_fraction: float, where: str):
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(y))
    try:
        train, test = train_test_split(indices, test_size=test_fraction, random_state=seed,
                                       stratify=y)
    except ValueError as error:
        raise ValueError(f"{where}: cannot make a stratified split of {len(y)} samples with "
                         f"test_fraction={test_fraction}: {error}") from None
    return train, test


def _check_label_range(y: np.ndarray, where: str, low: int, high: int) -> None:
    if y.size and (y.min() < low or y.max() > high):
        raise ValueError(f"{where}: labels must lie in {low}..{high}, found "
                         f"{y.min()}..{y.max()}")


def check_labels(data: Dataset) -> None:
    """The labels must be class indices 0..C-1 (C = data.num_classes, 2 <= C <= MAX_CLASSES)
    with training samples of every class, and test labels in the same range. ValueError saying
    what is wrong otherwise. Run before any training: a model is sized by C."""
    where = f"data set {data.name!r}"
    classes = data.num_classes
    if not 2 <= classes <= MAX_CLASSES:
        raise ValueError(f"{where} has {classes:,} classes; expected at least 2 (unlearning one class or some "
                         f"samples needs others to keep) and at most {MAX_CLASSES:,}")
    for split, y in (("train", data.y_train), ("test", data.y_test)):
        if len(y) == 0:
            raise ValueError(f"{where} has no {split} samples")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= classes:
            raise ValueError(f"{where}: {split} labels lie in {low}..{high}; expected class indices "
                             f"0..{classes - 1}")
    present = torch.unique(data.y_train)
    if len(present) == 1:
        raise ValueError(f"{where}: every training label is {int(present[0])}: a single class; unlearning needs "
                         f"at least two classes")
    if len(present) != classes:
        missing = sorted(set(range(classes)) - set(present.tolist()))
        shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        raise ValueError(f"{where}: labels must be a contiguous range 0..{classes - 1} with training samples of "
                         f"every class; {len(missing):,} classes have none ({shown})")


# --------------------------------------------------------------------------------------------
# digits


def _load_digits(seed: int, test_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits

    pixels, target = load_digits(return_X_y=True)
    x = (pixels / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = target.astype(np.int64)
    train, test = _stratified_split(y, seed, test_fraction, "digits")
    return Dataset("digits", torch.from_numpy(x[train]), _labels_tensor(y[train]),
                   torch.from_numpy(x[test]), _labels_tensor(y[test]), 10)


# --------------------------------------------------------------------------------------------
# npz


def _npz_images(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    where = f"{path}: array {key!r}"
    if x.ndim not in (3, 4):
        raise ValueError(f"{where} has shape {x.shape}; expected [N, H, W] or [N, C, H, W]")
    if x.shape[0] == 0 or x.size == 0:
        raise ValueError(f"{where} has shape {x.shape}; expected at least one non-empty image")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{where} has dtype {x.dtype}; expected uint8 (0..255) or a float "
                             f"dtype with values in [0, 1]")
        if np.isnan(x).any():
            raise ValueError(f"{where} contains NaN; expected values in [0, 1]")
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"{where} has values in [{low:g}, {high:g}]; float images must lie "
                             f"in [0, 1] (store uint8 for 0..255 pixels)")
    return x[:, None] if x.ndim == 3 else x


def _npz_labels(y: np.ndarray, path: Path, key: str, count: int, x_key: str) -> np.ndarray:
    where = f"{path}: array {key!r}"
    if y.ndim != 1:
        raise ValueError(f"{where} has shape {y.shape}; expected [N] labels")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.isnan(y).any():
            raise ValueError(f"{where} contains NaN; expected non-negative integer labels")
        raise ValueError(f"{where} has dtype {y.dtype}; expected non-negative integer labels "
                         f"(an integer dtype)")
    if len(y) != count:
        raise ValueError(f"{path}: array {x_key!r} has {count} samples but {key!r} has "
                         f"{len(y)} labels; expected the same length")
    if y.size and y.min() < 0:
        raise ValueError(f"{where} contains negative label {y.min()}; expected non-negative "
                         f"integer labels")
    return y.astype(np.int64)


def _npz_label_range(path: Path, labels: dict[str, np.ndarray]) -> None:
    """Before anything is sized by the labels: at most MAX_CLASSES classes, and two at least."""
    for key, y in labels.items():
        if y.size and int(y.max()) >= MAX_CLASSES:
            raise ValueError(f"{path}: array {key!r} holds the label {int(y.max())}; labels must be class "
                             f"indices 0..C-1 with at most {MAX_CLASSES:,} classes")
    values = np.unique(np.concatenate([y.reshape(-1) for y in labels.values()]))
    if len(values) == 1:
        raise ValueError(f"{path}: every label is {int(values[0])}: a single class; unlearning needs at least "
                         f"two classes")


def _to_float_tensor(x: np.ndarray) -> torch.Tensor:
    if x.dtype == np.uint8:
        return _uint8_to_float(x)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _load_npz(name: str, path: Path, seed: int, test_fraction: float) -> Dataset:
    import zipfile

    if not path.is_file():
        raise FileNotFoundError(f"npz data set file {path} not found")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz archive: {error}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single .npy array; expected an .npz archive with "
                         f"arrays 'x' and 'y' (np.savez)")
    with archive:
        present = set(archive.files)
        expected = "'x' ([N, H, W] or [N, C, H, W]) and 'y' ([N] integer labels)"
        for key in ("x", "y"):
            if key not in present:
                raise ValueError(f"{path}: missing array {key!r}; expected {expected}, "
                                 f"optionally with 'x_test' and 'y_test'; found "
                                 f"{sorted(present) or 'no arrays'}")
        if ("x_test" in present) != ("y_test" in present):
            missing = "y_test" if "x_test" in present else "x_test"
            raise ValueError(f"{path}: missing array {missing!r}; 'x_test' and 'y_test' must be "
                             f"given together (or neither, for a seeded split)")
        try:
            arrays = {key: archive[key] for key in ("x", "y", "x_test", "y_test") if key in present}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: cannot read arrays: {error}") from None

    x = _npz_images(arrays["x"], path, "x")
    y = _npz_labels(arrays["y"], path, "y", len(x), "x")
    if "x_test" in arrays:
        x_test = _npz_images(arrays["x_test"], path, "x_test")
        y_test = _npz_labels(arrays["y_test"], path, "y_test", len(x_test), "x_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise ValueError(f"{path}: array 'x_test' has images of shape {x_test.shape[1:]} "
                             f"but 'x' has {x.shape[1:]}; expected the same (C, H, W)")
        _npz_label_range(path, {"y": y, "y_test": y_test})
        x_train, y_train = x, y
    else:
        _npz_label_range(path, {"y": y})
        train, test = _stratified_split(y, seed, test_fraction, str(path))
        x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(name, _to_float_tensor(x_train), _labels_tensor(y_train),
                   _to_float_tensor(x_test), _labels_tensor(y_test), num_classes)


# --------------------------------------------------------------------------------------------
# downloads


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(urls: list[str], dest: Path, md5: str) -> None:
    """Download the first URL that works into `dest` atomically, verifying its MD5."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        log.info("downloading %s to %s", url, dest)
        handle, temporary = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.",
                                             suffix=".part")
        try:
            digest = hashlib.md5(usedforsecurity=False)
            request = urllib.request.Request(url, headers={"User-Agent": "intunlearn"})
            with os.fdopen(handle, "wb") as out, \
                    urllib.request.urlopen(request, timeout=60) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != md5:
                raise OSError(f"MD5 {digest.hexdigest()} does not match the published {md5}")
            os.replace(temporary, dest)
            return
        except OSError as error:  # URLError, HTTPError and timeouts are OSErrors
            errors.append(f"{url}: {error}")
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    raise OSError(f"could not download {dest.name} into {dest.parent}:\n  " + "\n  ".join(errors))


def _missing_error(name: str, folders: list[Path], files: list[str], source: str):
    return FileNotFoundError(
        f"{name}: {', '.join(files)} not found in {' or '.join(str(f) for f in folders)}. "
        f"Put the official files there (pass root=... or set $INTUNLEARN_DATA to use another "
        f"folder), or fetch them from {source} with intunlearn.data.load_dataset(..., "
        f"download=True) in Python.")


# --------------------------------------------------------------------------------------------
# MNIST (idx files)

_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                  "http://yann.lecun.com/exdb/mnist/")
_MNIST_FILES = {  # name -> MD5 of name.gz
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (magic 0x0000 08 ndim, then big-endian uint32 dims)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: cannot read idx file: {error}") from None
    magic = 0x00000800 | ndim
    if len(data) < 4 + 4 * ndim or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an idx file (starts with 0x{data[:4].hex()}); expected "
                         f"magic 0x{magic:08x}")
    if data[2] != 0x08:
        raise ValueError(f"{path}: idx element type 0x{data[2]:02x}; expected 0x08 (unsigned "
                         f"byte), magic 0x{magic:08x}")
    if data[3] != ndim:
        raise ValueError(f"{path}: idx file has {data[3]} dimensions (magic 0x{data[:4].hex()}); "
                         f"expected {ndim} (magic 0x{magic:08x})")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    count = int(np.prod(dims, dtype=np.int64))
    body = len(data) - 4 - 4 * ndim
    if body != count:
        raise ValueError(f"{path}: header gives dimensions {list(dims)} ({count} bytes) but the "
                         f"file holds {body} bytes of data")
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=4 + 4 * ndim).reshape(dims)


def _load_mnist(root: Path, download: bool) -> Dataset:
    folders = [root, root / "MNIST" / "raw", root / "mnist"]

    def locate():
        found = {}
        for base in _MNIST_FILES:
            for folder in folders:
                for candidate in (folder / base, folder / f"{base}.gz"):
                    if candidate.is_file():
                        found[base] = candidate
                        break
                if base in found:
                    break
        return found

    found = locate()
    missing = [base for base in _MNIST_FILES if base not in found]
    if missing and download:
        for base in missing:
            _fetch([mirror + f"{base}.gz" for mirror in _MNIST_MIRRORS], root / f"{base}.gz",
                   _MNIST_FILES[base])
        found = locate()
        missing = [base for base in _MNIST_FILES if base not in found]
    if missing:
        raise _missing_error("mnist", folders, [f"{base}[.gz]" for base in missing],
                             _MNIST_MIRRORS[0])

    splits = []
    for prefix in ("train", "t10k"):
        images_path = found[f"{prefix}-images-idx3-ubyte"]
        labels_path = found[f"{prefix}-labels-idx1-ubyte"]
        images = _read_idx(images_path, 3)
        labels = _read_idx(labels_path, 1)
        if len(images) != len(labels):
            raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                             f"{len(labels)} labels; expected the same number")
        _check_label_range(labels, str(labels_path), 0, 9)
        splits += [_uint8_to_float(images[:, None]), _labels_tensor(labels)]
    return Dataset("mnist", *splits, num_classes=10)


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickles)


def _numpy_globals() -> dict[tuple[str, str], object]:
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.int64(0).__reduce__()[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    allowed[("_codecs", "encode")] = __import__("codecs").encode
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a downloaded file runs no code."""

    _allowed = None

    def find_class(self, module, name):
        if _ArrayUnpickler._allowed is None:
            _ArrayUnpickler._allowed = _numpy_globals()
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}; a CIFAR "
                                         f"batch holds only numpy arrays and lists") from None


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as file:
            batch = _ArrayUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, OSError) as error:
        raise ValueError(f"{path}: not a CIFAR python batch: {error}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: holds a {type(batch).__name__}; expected a CIFAR python batch "
                         f"(a dict with b'data' and b'{label_key}')")

    def get(key):
        for candidate in (key.encode(), key):
            if candidate in batch:
                return batch[candidate]
        raise ValueError(f"{path}: missing key b'{key}'; expected a CIFAR python batch with "
                         f"b'data' and b'{label_key}', found {sorted(map(repr, batch))}")

    data, labels = get("data"), get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        raise ValueError(f"{path}: b'data' is {_describe(data)}; expected uint8 [N, 3072] "
                         f"(3 x 32 x 32, row-major CHW)")
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: b'{label_key}' is not a list of labels: {error}") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: b'{label_key}' is {_describe(labels)}; expected [N] integer "
                         f"labels")
    if len(labels) != len(data):
        raise ValueError(f"{path}: b'data' holds {len(data)} images but b'{label_key}' holds "
                         f"{len(labels)} labels; expected the same number")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
_CIFAR_SETS = {
    "cifar10": dict(folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
                    md5="c58f30108f718f92721af3b95e74349a",
                    train_files=[f"data_batch_{i}" for i in range(1, 6)],
                    test_files=["test_batch"], label_key="labels", num_classes=10),
    "cifar100": dict(folder="cifar-100-python", archive="cifar-100-python.tar.gz",
                     md5="eb9058c3a382ffc7106e4002c42a8d85", train_files=["train"],
                     test_files=["test"], label_key="fine_labels", num_classes=100),
}


def _load_cifar(name: str, root: Path, download: bool) -> Dataset:
    spec = _CIFAR_SETS[name]
    folder, label_key, num_classes = spec["folder"], spec["label_key"], spec["num_classes"]
    train_files, test_files = spec["train_files"], spec["test_files"]
    directory = root / folder
    names = train_files + test_files
    missing = [n for n in names if not (directory / n).is_file()]
    url = _CIFAR_URL + spec["archive"]
    if missing and download:
        tarball = root / spec["archive"]
        if not (tarball.is_file() and _md5(tarball) == spec["md5"]):
            _fetch([url], tarball, spec["md5"])
        _extract_folder(tarball, folder, directory)
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise OSError(f"{tarball} did not contain {folder}/{', '.join(missing)}")
    if missing:
        raise _missing_error(name, [directory], missing, url)

    splits = []
    for files in (train_files, test_files):
        parts = [_read_cifar_batch(directory / n, label_key) for n in files]
        images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        _check_label_range(labels, f"{name} ({', '.join(str(directory / n) for n in files)})",
                           0, num_classes - 1)
        splits += [_uint8_to_float(images), _labels_tensor(labels)]
    return Dataset(name, *splits, num_classes=num_classes)


def _extract_folder(tarball: Path, folder: str, directory: Path) -> None:
    """Extract the regular files directly under `folder` in the archive into `directory`.

    Only plain files at depth two are written, under their base names, each atomically, so a
    hostile archive cannot write outside `directory` (no links, no absolute or ../ paths).
    """
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                parts = [p for p in PurePosixPath(member.name).parts if p not in ("", ".")]
                if not member.isfile() or len(parts) != 2 or parts[0] != folder \
                        or parts[1] in ("..",):
                    continue
                source = tar.extractfile(member)
                handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{parts[1]}.",
                                                     suffix=".part")
                try:
                    with os.fdopen(handle, "wb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
                    os.replace(temporary, directory / parts[1])
                finally:
                    if os.path.exists(temporary):
                        os.unlink(temporary)
    except (tarfile.TarError, EOFError) as error:
        raise OSError(f"{tarball}: cannot extract: {error}") from None


def _load_cifar10(root: Path, download: bool) -> Dataset:
    return _load_cifar("cifar10", root, download)


def _load_cifar100(root: Path, download: bool) -> Dataset:
    return _load_cifar("cifar100", root, download)


# --------------------------------------------------------------------------------------------
# SVHN (cropped digits, MATLAB .mat)

_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
_SVHN_FILES = {"train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
               "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"}


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except (ValueError, TypeError, OSError, NotImplementedError,
            scipy.io.matlab.MatReadError) as error:
        raise ValueError(f"{path}: not a readable MATLAB .mat file: {error}") from None
    for key in ("X", "y"):
        if key not in mat:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise ValueError(f"{path}: missing array {key!r}; expected 'X' uint8 [32, 32, 3, N] "
                             f"and 'y' [N] labels 1..10, found {found}")
    images, labels = mat["X"], mat["y"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[2] != 3:
        raise ValueError(f"{path}: array 'X' is {_describe(images)}; expected uint8 "
                         f"[H, W, 3, N] (SVHN's height, width, channel, sample order)")
    count = images.shape[3]
    labels = labels.reshape(-1)
    if len(labels) != count:
        raise ValueError(f"{path}: array 'X' holds {count} images but 'y' holds {len(labels)} "
                         f"labels; expected the same number")
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise ValueError(f"{path}: array 'y' has dtype {labels.dtype}; expected integer labels "
                         f"1..10")
    if count and (np.isnan(labels.astype(np.float64)).any()
                  or not np.isin(labels, np.arange(1, 11)).all()):
        bad = labels[~np.isin(labels, np.arange(1, 11))][:5]
        raise ValueError(f"{path}: array 'y' has labels {bad.tolist()} outside 1..10; expected "
                         f"SVHN labels 1..10 (10 is the digit 0)")
    labels = labels.astype(np.int64)
    labels[labels == 10] = 0
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels


def _load_svhn(root: Path, download: bool) -> Dataset:
    folders = [root, root / "svhn"]

    def locate():
        return {n: next((f / n for f in folders if (f / n).is_file()), None) for n in _SVHN_FILES}

    found = locate()
    missing = [n for n, p in found.items() if p is None]
    if missing and download:
        for n in missing:
            _fetch([_SVHN_URL + n], root / n, _SVHN_FILES[n])
        found = locate()
        missing = [n for n, p in found.items() if p is None]
    if missing:
        raise _missing_error("svhn", folders, missing, _SVHN_URL)
    splits = []
    for n in ("train_32x32.mat", "test_32x32.mat"):
        images, labels = _read_svhn(found[n])
        splits += [_uint8_to_float(images), _labels_tensor(labels)]
    return Dataset("svhn", *splits, num_classes=10)
