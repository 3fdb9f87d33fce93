"""Dataset loaders: tiny fake files in the official formats, written by hand in tmp_path."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import scipy.io
import torch

from intunlearn.data import SPECS, Dataset, default_root, load_dataset

# ---------------------------------------------------------------------------------------------
# writers for the official formats


def write_idx(path, array: np.ndarray, *, compress=False, magic=None):
    """idx: 0x00 0x00, type 0x08 (ubyte), ndim; big-endian uint32 dims; the bytes."""
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x00000800 | array.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    if compress:
        with gzip.open(path, "wb") as file:
            file.write(data)
    else:
        path.write_bytes(data)


def make_mnist(folder, n_train=12, n_test=6, *, compress=False, size=(28, 28)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, *size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress=compress)
        out[prefix] = (images, labels)
    return out


def write_cifar_batch(path, data: np.ndarray, labels, label_key=b"labels", extra=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        content = {b"batch_label": b"fake", b"data": data, label_key: list(labels)}
        pickle.dump({**content, **(extra or {})}, file, protocol=2)


def make_cifar10(root, per_batch=4, n_test=5):
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    batches = []
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(per_batch)]
        write_cifar_batch(folder / f"data_batch_{i}", data, labels)
        batches.append((data, labels))
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    write_cifar_batch(folder / "test_batch", test, list(range(n_test)))
    return batches, test


def make_svhn(folder, n_train=7, n_test=4, size=(32, 32)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (*size, 3, n), dtype=np.uint8)  # [H, W, C, N]
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split] = (x, y)
    return out


def check_dataset(ds: Dataset, shape, num_classes):
    assert ds.input_shape == shape
    assert ds.num_classes == num_classes
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == shape and x.shape[0] == y.shape[0] and x.is_contiguous()
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert 0 <= int(y.min()) and int(y.max()) < num_classes


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_and_counts():
    ds = load_dataset("digits")
    check_dataset(ds, (1, 8, 8), 10)
    assert ds.name == "digits"
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert len(ds.x_test) == 450  # ceil(0.25 * 1797)
    assert set(ds.y_train.tolist()) == set(range(10)) == set(ds.y_test.tolist())
    assert float(ds.x_train.max()) == 1.0  # 16 / 16
    assert "digits" in repr(ds) and "1797" not in repr(ds)  # short repr, no tensor dump


def test_digits_matches_sklearn_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=0.25, random_state=3,
                                              stratify=digits.target)
    ds = load_dataset("digits", seed=3)
    assert np.array_equal(ds.x_train.reshape(len(x_tr), 64).numpy(), x_tr)
    assert np.array_equal(ds.x_test.reshape(len(x_te), 64).numpy(), x_te)
    assert np.array_equal(ds.y_train.numpy(), y_tr) and np.array_equal(ds.y_test.numpy(), y_te)


def test_digits_split_deterministic_and_stratified():
    a, b = load_dataset("digits", seed=5), load_dataset("digits", seed=5)
    c = load_dataset("digits", seed=6)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)
    train_counts = np.bincount(a.y_train.numpy(), minlength=10)
    test_counts = np.bincount(a.y_test.numpy(), minlength=10)
    fractions = test_counts / (train_counts + test_counts)
    assert np.all(np.abs(fractions - 0.25) < 0.02)
    small = load_dataset("digits", test_fraction=0.1)
    assert len(small.x_test) == 180


# ---------------------------------------------------------------------------------------------
# npz


def test_npz_uint8_hw_with_split(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (40, 5, 6), dtype=np.uint8)
    x[0, 2, 3] = 255
    y = np.repeat(np.arange(4), 10)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}", seed=1)
    check_dataset(ds, (1, 5, 6), 4)
    test_counts = np.bincount(ds.y_test.numpy(), minlength=4)
    assert len(ds.x_test) == 10 and set(test_counts.tolist()) <= {2, 3}  # stratified: 2.5 each
    again = load_dataset(f"npz:{tmp_path / 'd.npz'}", seed=1)
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_test, again.y_test)
    # every image is x / 255 of some input image, with its own label
    flat = {(bytes(img.tobytes()), int(lab)) for img, lab in zip(x, y)}
    for xs, ys in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        back = torch.round(xs * 255).to(torch.uint8).numpy()[:, 0]
        assert all((img.tobytes(), int(lab)) in flat for img, lab in zip(back, ys.tolist()))
        assert torch.equal(xs, torch.from_numpy(back[:, None]).float() / 255)


def test_npz_float_nchw_with_test_arrays(tmp_path):
    x = np.linspace(0, 1, 6 * 2 * 3 * 3).reshape(6, 2, 3, 3)
    xt = np.zeros((2, 2, 3, 3), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2]), x_test=xt,
             y_test=np.array([6, 0], dtype=np.int32))
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    check_dataset(ds, (2, 3, 3), 7)  # max label (test) + 1
    assert torch.equal(ds.x_train, torch.from_numpy(x.astype(np.float32)))
    assert ds.y_test.tolist() == [6, 0]
    assert ds.name == f"npz:{tmp_path / 'd.npz'}"


def _npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return f"npz:{path}"


GOOD_X = np.zeros((8, 4, 4), dtype=np.uint8)
GOOD_Y = np.array([0, 1] * 4)


@pytest.mark.parametrize("arrays, match", [
    (dict(y=GOOD_Y), r"bad\.npz.*missing array 'x'"),
    (dict(x=GOOD_X), r"bad\.npz.*missing array 'y'"),
    (dict(x=GOOD_X, y=GOOD_Y, x_test=GOOD_X), r"missing array 'y_test'"),
    (dict(x=GOOD_X, y=GOOD_Y[:5]), r"'x' has 8 samples but 'y' has 5"),
    (dict(x=np.zeros((8, 16)), y=GOOD_Y), r"array 'x' has shape \(8, 16\); expected \[N, H, W\]"),
    (dict(x=np.zeros((8, 1, 2, 2, 2)), y=GOOD_Y), r"array 'x' has shape .*expected"),
    (dict(x=GOOD_X, y=GOOD_Y.reshape(4, 2)), r"array 'y' has shape \(4, 2\); expected \[N\]"),
    (dict(x=np.full((8, 2, 2), 2.5), y=GOOD_Y),
     r"array 'x' has values in \[2\.5, 2\.5\].*\[0, 1\]"),
    (dict(x=np.full((8, 2, 2), -0.5), y=GOOD_Y), r"values in \[-0\.5, -0\.5\]"),
    (dict(x=np.full((8, 2, 2), np.nan), y=GOOD_Y), r"array 'x' contains NaN"),
    (dict(x=GOOD_X.astype(np.int32), y=GOOD_Y), r"array 'x' has dtype int32; expected uint8"),
    (dict(x=GOOD_X, y=GOOD_Y - 1), r"array 'y' contains negative label -1"),
    (dict(x=GOOD_X, y=GOOD_Y.astype(float)), r"array 'y' has dtype float64; expected .*integer"),
    (dict(x=GOOD_X, y=np.where(GOOD_Y == 0, np.nan, 1.0)), r"array 'y' contains NaN"),
    (dict(x=GOOD_X, y=GOOD_Y, x_test=np.zeros((2, 5, 5), np.uint8), y_test=np.array([0, 1])),
     r"'x_test' has images of shape \(1, 5, 5\) but 'x' has \(1, 4, 4\)"),
    (dict(x=GOOD_X, y=GOOD_Y, x_test=np.full((2, 4, 4), 3.0), y_test=np.array([0, 1])),
     r"array 'x_test' has values in \[3, 3\]"),
    (dict(x=GOOD_X[:0], y=GOOD_Y[:0]), r"array 'x' has shape \(0, 4, 4\); expected at least one"),
])
def test_npz_bad_input(tmp_path, arrays, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(_npz(tmp_path, **arrays))


def test_npz_split_impossible_and_bad_files(tmp_path):
    # a class with one sample cannot be stratified
    with pytest.raises(ValueError, match=r"bad\.npz: cannot make a stratified split"):
        load_dataset(_npz(tmp_path, x=GOOD_X, y=np.array([0, 1, 1, 1, 1, 1, 1, 2])))
    with pytest.raises(FileNotFoundError, match=r"nope\.npz"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match=r"junk\.npz: not a readable \.npz"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")
    np.save(tmp_path / "single.npy", GOOD_X)
    with pytest.raises(ValueError, match=r"single\.npy: holds a single \.npy array"):
        load_dataset(f"npz:{tmp_path / 'single.npy'}")
    np.savez(tmp_path / "obj.npz", x=np.array([object()] * 8, dtype=object), y=GOOD_Y)
    with pytest.raises(ValueError, match=r"obj\.npz"):
        load_dataset(f"npz:{tmp_path / 'obj.npz'}")


# ---------------------------------------------------------------------------------------------
# MNIST


@pytest.mark.parametrize("sub, compress", [("", False), ("", True), ("MNIST/raw", False),
                                           ("mnist", True)])
def test_mnist_layouts(tmp_path, sub, compress):
    written = make_mnist(tmp_path / sub if sub else tmp_path, compress=compress)
    ds = load_dataset("mnist", root=tmp_path)
    check_dataset(ds, (1, 28, 28), 10)
    assert ds.name == "mnist" and len(ds.x_train) == 12 and len(ds.x_test) == 6
    images, labels = written["train"]
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(images).float() / 255)
    assert ds.y_train.tolist() == labels.tolist()
    images, labels = written["t10k"]
    assert float(ds.x_test[3, 0, 17, 5]) == np.float32(images[3, 17, 5]) / np.float32(255)
    assert ds.y_test.tolist() == labels.tolist()


def test_mnist_non_square_pixel_position(tmp_path):
    images = np.zeros((2, 3, 5), dtype=np.uint8)
    images[1, 2, 4] = 255
    images[0, 0, 1] = 51
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([3, 9]))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1]))
    ds = load_dataset("mnist", root=tmp_path)
    assert ds.input_shape == (1, 3, 5)
    assert float(ds.x_train[1, 0, 2, 4]) == 1.0 and float(ds.x_train[0, 0, 0, 1]) == np.float32(0.2)
    assert float(ds.x_train.sum()) == pytest.approx(1.2)


def test_mnist_default_root_env(tmp_path, monkeypatch):
    make_mnist(tmp_path / "data")
    monkeypatch.setenv("INTUNLEARN_DATA", str(tmp_path / "data"))
    assert default_root() == tmp_path / "data"
    assert len(load_dataset("mnist").x_train) == 12
    monkeypatch.delenv("INTUNLEARN_DATA")
    assert default_root().parts[-2:] == (".cache", "intunlearn")


def test_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "download=True" in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        assert name in message
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte") as info:
        load_dataset("mnist", root=tmp_path)
    assert "train-images" not in str(info.value)


@pytest.mark.parametrize("corrupt, match", [
    (lambda p: write_idx(p, np.zeros((2, 4, 4)), magic=0x00000903),
     r"train-images-idx3-ubyte: idx element type 0x09; expected 0x08"),
    (lambda p: write_idx(p, np.zeros((2, 16))),
     r"train-images-idx3-ubyte: idx file has 2 dimensions.*expected 3 \(magic 0x00000803\)"),
    (lambda p: p.write_bytes(b"\x12\x34\x08\x03" + bytes(20)),
     r"not an idx file \(starts with 0x12340803\); expected magic 0x00000803"),
    (lambda p: p.write_bytes(p.read_bytes()[:-7]),
     r"header gives dimensions \[12, 28, 28\] \(9408 bytes\) but the file holds 9401"),
])
def test_mnist_corrupt_idx(tmp_path, corrupt, match):
    make_mnist(tmp_path)
    corrupt(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(ValueError, match=match):
        load_dataset("mnist", root=tmp_path)


def test_mnist_label_problems(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(11))
    with pytest.raises(ValueError, match=r"holds 12 images but .*train-labels-idx1-ubyte holds 11"):
        load_dataset("mnist", root=tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(12, 10))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: labels must lie in 0\.\.9"):
        load_dataset("mnist", root=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(12))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: cannot read"):
        load_dataset("mnist", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# CIFAR


def test_cifar10_layout_and_labels(tmp_path):
    batches, test = make_cifar10(tmp_path)
    ds = load_dataset("cifar10", root=tmp_path)
    check_dataset(ds, (3, 32, 32), 10)
    assert len(ds.x_train) == 20 and len(ds.x_test) == 5
    assert ds.y_train.tolist() == [lab for _, labels in batches for lab in labels]
    assert ds.y_test.tolist() == list(range(5))
    # row-major CHW: flat index c*1024 + h*32 + w
    for c, h, w in ((0, 0, 0), (1, 5, 7), (2, 31, 30), (0, 17, 3)):
        flat = c * 1024 + h * 32 + w
        assert float(ds.x_train[6, c, h, w]) == batches[1][0][2, flat] / np.float32(255)
        assert float(ds.x_test[4, c, h, w]) == test[4, flat] / np.float32(255)


def test_cifar10_known_pixel(tmp_path):
    make_cifar10(tmp_path)
    data = np.zeros((2, 3072), dtype=np.uint8)
    data[1, 2 * 1024 + 3 * 32 + 4] = 255  # blue, row 3, column 4
    write_cifar_batch(tmp_path / "cifar-10-batches-py" / "test_batch", data, [7, 8])
    ds = load_dataset("cifar10", root=tmp_path)
    assert float(ds.x_test[1, 2, 3, 4]) == 1.0 and float(ds.x_test.sum()) == 1.0
    assert ds.y_test.tolist() == [7, 8]


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    data = np.zeros((3, 3072), dtype=np.uint8)
    data[0, 1024 + 31 * 32 + 0] = 102  # green, row 31, column 0
    write_cifar_batch(folder / "train", data, [99, 5, 42], label_key=b"fine_labels",
                      extra={b"coarse_labels": [19, 1, 2]})
    write_cifar_batch(folder / "test", data[:2], [0, 73], label_key=b"fine_labels",
                      extra={b"coarse_labels": [0, 3]})
    ds = load_dataset("cifar100", root=tmp_path)
    check_dataset(ds, (3, 32, 32), 100)
    assert ds.y_train.tolist() == [99, 5, 42] and ds.y_test.tolist() == [0, 73]
    assert float(ds.x_train[0, 1, 31, 0]) == np.float32(102) / np.float32(255)
    assert float(ds.x_train.sum()) == pytest.approx(0.4)


def test_cifar_pickle_protocols_and_str_keys(tmp_path):
    make_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    for protocol in (4, 5):
        with open(folder / "test_batch", "wb") as file:
            pickle.dump({"data": data, "labels": np.array([1, 2])}, file, protocol=protocol)
        ds = load_dataset("cifar10", root=tmp_path)
        assert torch.equal(ds.x_test, torch.from_numpy(data.reshape(2, 3, 32, 32)).float() / 255)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("content, match", [
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": Evil()},
     r"test_batch: not a CIFAR python batch: refusing to unpickle global .*print"),
    ({b"labels": [0, 1]}, r"test_batch: missing key b'data'"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, r"test_batch: missing key b'labels'"),
    ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]},
     r"b'data' is .*shape \(2, 3000\); expected uint8 \[N, 3072\]"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},
     r"dtype float32.*expected uint8"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]},
     r"b'data' holds 2 images but b'labels' holds 3 labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"labels must lie in 0\.\.9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.0, 1.0]},
     r"b'labels' is .*float64.*expected \[N\] integer labels"),
    ([1, 2, 3], r"test_batch: holds a list; expected a CIFAR python batch"),
])
def test_cifar_bad_batches(tmp_path, content, match):
    make_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as file:
        pickle.dump(content, file, protocol=2)
    with pytest.raises(ValueError, match=match):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar10", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "download=True" in message
    assert "data_batch_1" in message and "data_batch_5" in message and "test_batch" in message
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_3 not found") as info:
        load_dataset("cifar10", root=tmp_path)
    assert "data_batch_1" not in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.*train, test|train, test"):
        load_dataset("cifar100", root=tmp_path)


def test_cifar_extract_only_safe_members(tmp_path):
    """The download path's extraction, fed a local archive (no network)."""
    import io
    import tarfile

    from intunlearn import data

    tarball = tmp_path / "a.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        def add(name, payload=b"x", kind=tarfile.REGTYPE):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(payload) if kind == tarfile.REGTYPE else 0
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            tar.addfile(info, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)
        add("cifar-10-batches-py/data_batch_1", b"batch1")
        add("./cifar-10-batches-py/test_batch", b"test")
        add("cifar-10-batches-py/../evil", b"evil")
        add("/abs/evil", b"evil")
        add("cifar-10-batches-py/sub/deep", b"deep")
        add("cifar-10-batches-py/link", kind=tarfile.SYMTYPE)
    out = tmp_path / "root" / "cifar-10-batches-py"
    data._extract_folder(tarball, "cifar-10-batches-py", out)
    assert sorted(p.name for p in out.iterdir()) == ["data_batch_1", "test_batch"]
    assert (out / "data_batch_1").read_bytes() == b"batch1"
    assert not (tmp_path / "root" / "evil").exists() and not (tmp_path / "evil").exists()


# ---------------------------------------------------------------------------------------------
# SVHN


@pytest.mark.parametrize("sub", ["", "svhn"])
def test_svhn_layout_and_label_mapping(tmp_path, sub):
    written = make_svhn(tmp_path / sub if sub else tmp_path)
    ds = load_dataset("svhn", root=tmp_path)
    check_dataset(ds, (3, 32, 32), 10)
    assert len(ds.x_train) == 7 and len(ds.x_test) == 4
    x, y = written["train"]
    assert ds.y_train.tolist() == [1, 2, 3, 4, 5, 6, 7]
    # X[h, w, c, n] -> x[n, c, h, w]
    for n, c, h, w in ((0, 0, 0, 0), (6, 2, 31, 1), (3, 1, 4, 29)):
        assert float(ds.x_train[n, c, h, w]) == x[h, w, c, n] / np.float32(255)
    assert torch.equal(ds.x_train, torch.from_numpy(x.transpose(3, 2, 0, 1).copy()).float() / 255)


def test_svhn_ten_means_zero_and_known_pixel(tmp_path):
    x = np.zeros((32, 32, 3, 12), dtype=np.uint8)
    x[5, 9, 2, 11] = 255  # row 5, column 9, blue, sample 11
    y = np.array([10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10], dtype=np.uint8).reshape(-1, 1)
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x[..., :2], "y": y[:2].astype(float)})
    ds = load_dataset("svhn", root=tmp_path)
    assert ds.y_train.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0]
    assert ds.y_test.tolist() == [0, 1]
    assert float(ds.x_train[11, 2, 5, 9]) == 1.0 and float(ds.x_train.sum()) == 1.0


@pytest.mark.parametrize("arrays, match", [
    (dict(X=np.zeros((32, 32, 3, 2), np.uint8)), r"train_32x32\.mat: missing array 'y'"),
    (dict(y=np.array([[1], [2]])), r"train_32x32\.mat: missing array 'X'"),
    (dict(X=np.zeros((32, 32, 3, 2), np.uint8), y=np.array([[0], [1]])),
     r"train_32x32\.mat: array 'y' has labels \[0\] outside 1\.\.10"),
    (dict(X=np.zeros((32, 32, 3, 2), np.uint8), y=np.array([[11], [1]])), r"labels \[11\]"),
    (dict(X=np.zeros((32, 32, 3, 2), np.uint8), y=np.array([[1.5], [1]])), r"labels \[1\.5\]"),
    (dict(X=np.zeros((32, 32, 3, 2), np.uint8), y=np.array([[1], [2], [3]])),
     r"'X' holds 2 images but 'y' holds 3 labels"),
    (dict(X=np.zeros((32, 32, 2), np.uint8), y=np.array([[1], [2]])),
     r"array 'X' is .*expected uint8 \[H, W, 3, N\]"),
    (dict(X=np.zeros((32, 32, 3, 2), np.float64), y=np.array([[1], [2]])),
     r"array 'X' is .*float64.*expected uint8"),
])
def test_svhn_bad_files(tmp_path, arrays, match):
    make_svhn(tmp_path)
    scipy.io.savemat(tmp_path / "train_32x32.mat", arrays)
    with pytest.raises(ValueError, match=match):
        load_dataset("svhn", root=tmp_path)


def test_svhn_missing_and_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("svhn", root=tmp_path)
    message = str(info.value)
    assert "train_32x32.mat" in message and "test_32x32.mat" in message
    assert str(tmp_path) in message and "download=True" in message
    make_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"garbage" * 30)
    with pytest.raises(ValueError, match=r"test_32x32\.mat: not a readable MATLAB"):
        load_dataset("svhn", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# spec and argument validation


@pytest.mark.parametrize("spec", ["imagenet", "", "npz", "mnist2"])
def test_unknown_spec_lists_valid(spec):
    with pytest.raises(ValueError, match=r"unknown dataset spec") as info:
        load_dataset(spec)
    for valid in SPECS:
        assert valid in str(info.value)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(spec="npz:"), ValueError, r"needs a path"),
    (dict(spec=3), TypeError, r"spec must be a str"),
    (dict(spec="digits", seed=-1), ValueError, r"seed must be an int"),
    (dict(spec="digits", seed=1.5), ValueError, r"seed must be an int"),
    (dict(spec="digits", test_fraction=0.0), ValueError, r"test_fraction .* between 0 and 1"),
    (dict(spec="digits", test_fraction=1.0), ValueError, r"test_fraction"),
    (dict(spec="digits", download="yes"), TypeError, r"download must be a bool"),
])
def test_bad_arguments(kwargs, error, match):
    spec = kwargs.pop("spec")
    with pytest.raises(error, match=match):
        load_dataset(spec, **kwargs)


def test_spec_case_and_whitespace():
    assert load_dataset(" Digits ").name == "digits"


def test_dataset_validates_structure():
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64)
    ds = Dataset("t", x, y, x, y, 3)
    assert ds.input_shape == (1, 2, 2)
    with pytest.raises(ValueError, match=r"x_train must be a float32"):
        Dataset("t", x.double(), y, x, y, 3)
    with pytest.raises(ValueError, match=r"y_test must be an int64"):
        Dataset("t", x, y, x, y.int(), 3)
    with pytest.raises(ValueError, match=r"x_train has 4 samples but y_train has 3"):
        Dataset("t", x, y[:3], x, y, 3)
    with pytest.raises(ValueError, match=r"train images are \(1, 2, 2\) but test"):
        Dataset("t", x, y, torch.zeros(4, 1, 3, 3), y, 3)
    with pytest.raises(ValueError, match=r"num_classes"):
        Dataset("t", x, y, x, y, 0)
    with pytest.raises(AttributeError):
        ds.name = "other"


# ---------------------------------------------------------------------------------------------
# download=True, served from local file:// URLs (no network)


def _md5(path):
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def _no_partial_files(folder):
    return not [p for p in folder.rglob("*") if p.name.endswith(".part")]


def test_mnist_download_from_mirrors(tmp_path, monkeypatch):
    from intunlearn import data

    server = tmp_path / "server"
    written = make_mnist(server, compress=True)
    monkeypatch.setattr(data, "_MNIST_MIRRORS", ((tmp_path / "offline").as_uri() + "/",
                                                 server.as_uri() + "/"))
    monkeypatch.setattr(data, "_MNIST_FILES", {p.name[:-3]: _md5(p) for p in server.iterdir()})
    root = tmp_path / "root"
    ds = load_dataset("mnist", root=root, download=True)
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in server.iterdir())
    assert ds.y_train.tolist() == written["train"][1].tolist()
    # present files are used as they are: no fetch even if the mirrors now fail
    monkeypatch.setattr(data, "_MNIST_MIRRORS", ((tmp_path / "offline").as_uri() + "/",))
    assert torch.equal(load_dataset("mnist", root=root, download=True).x_test, ds.x_test)


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    from intunlearn import data

    server = tmp_path / "server"
    make_mnist(server, compress=True)
    monkeypatch.setattr(data, "_MNIST_MIRRORS", (server.as_uri() + "/",))
    monkeypatch.setattr(data, "_MNIST_FILES", {p.name[:-3]: "0" * 32 for p in server.iterdir()})
    root = tmp_path / "root"
    message = r"(?s)could not download .*-idx\d-ubyte\.gz into .*root.*MD5 .* does not match"
    with pytest.raises(OSError, match=message):
        load_dataset("mnist", root=root, download=True)
    assert list(root.iterdir()) == []


def test_cifar_download_and_extract(tmp_path, monkeypatch):
    import tarfile

    from intunlearn import data

    staging = tmp_path / "staging"
    batches, test = make_cifar10(staging)
    server = tmp_path / "server"
    server.mkdir()
    with tarfile.open(server / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(data, "_CIFAR_URL", server.as_uri() + "/")
    monkeypatch.setitem(data._CIFAR_SETS["cifar10"], "md5",
                        _md5(server / "cifar-10-python.tar.gz"))
    root = tmp_path / "root"
    ds = load_dataset("cifar10", root=root, download=True)
    assert ds.y_test.tolist() == list(range(5)) and len(ds.x_train) == 20
    assert (root / "cifar-10-batches-py" / "data_batch_5").read_bytes() == \
        (staging / "cifar-10-batches-py" / "data_batch_5").read_bytes()
    assert _no_partial_files(root)
    # a lost batch is re-extracted from the kept archive, without fetching again
    (root / "cifar-10-batches-py" / "data_batch_2").unlink()
    monkeypatch.setattr(data, "_CIFAR_URL", (tmp_path / "offline").as_uri() + "/")
    assert torch.equal(load_dataset("cifar10", root=root, download=True).x_train, ds.x_train)


def test_svhn_download(tmp_path, monkeypatch):
    from intunlearn import data

    server = tmp_path / "server"
    make_svhn(server)
    monkeypatch.setattr(data, "_SVHN_URL", server.as_uri() + "/")
    monkeypatch.setattr(data, "_SVHN_FILES", {p.name: _md5(p) for p in server.iterdir()})
    root = tmp_path / "root"
    ds = load_dataset("svhn", root=root, download=True)
    assert len(ds.x_train) == 7 and len(ds.x_test) == 4 and _no_partial_files(root)
    assert sorted(p.name for p in root.iterdir()) == ["test_32x32.mat", "train_32x32.mat"]
