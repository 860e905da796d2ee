"""Tests of the offline benchmark data loaders (stam_optimizer.benchmarks.tasks.data)."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from stam_optimizer.benchmarks.tasks import data

MNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_NAMES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


# ------------------------------------------------------------------------- fixtures


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (magic 0x000008NN, big-endian dims)."""
    assert arr.dtype == np.uint8
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = idx_bytes(arr)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def make_mnist_arrays(seed: int, n_train: int = 20, n_test: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_mnist(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> None:
    for name, arr in arrays.items():
        write_idx(folder / name, arr, gz)


def make_cifar_batches(seed: int, per_batch: int = 3, n_test: int = 4) -> dict[str, tuple]:
    """name -> (images (n, 32, 32, 3) uint8, labels list) for 5 train batches + test."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in CIFAR_NAMES:
        n = n_test if name == "test_batch" else per_batch
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        out[name] = (images, labels)
    return out


def cifar_pickle(images: np.ndarray, labels: list[int], name: str) -> bytes:
    # Row layout of the real files: 1024 red, 1024 green, 1024 blue values, row-major.
    rows = np.stack([
        np.concatenate([img[:, :, 0].ravel(), img[:, :, 1].ravel(), img[:, :, 2].ravel()])
        for img in images
    ]).astype(np.uint8)
    batch = {
        b"batch_label": name.encode(),
        b"labels": labels,
        b"data": rows,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    return pickle.dumps(batch, protocol=2)


def write_cifar_folder(root: Path, batches: dict[str, tuple]) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, (images, labels) in batches.items():
        (folder / name).write_bytes(cifar_pickle(images, labels, name))
    return folder


def write_cifar_archive(root: Path, batches: dict[str, tuple]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, (images, labels) in batches.items():
            payload = cifar_pickle(images, labels, name)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return archive


# ---------------------------------------------------------------------------- mnist


@pytest.mark.parametrize(
    ("which", "sub", "gz"),
    [("mnist", "mnist", False), ("fashion_mnist", "fashion_mnist/raw", True), ("mnist", "", True)],
)
def test_load_mnist_raw_pixels_and_splits(tmp_path, which, sub, gz):
    arrays = make_mnist_arrays(seed=1)
    write_mnist(tmp_path / sub, arrays, gz)
    ds = data.load_mnist(tmp_path, which, normalize=False)

    tr_img, tr_lab = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    n_val = 2  # 10% of 20 training images (< 5000)
    assert ds.x_train.shape == (18, 28, 28, 1) and ds.x_val.shape == (2, 28, 28, 1)
    assert ds.x_test.shape == (5, 28, 28, 1)
    for x in (ds.x_train, ds.x_val, ds.x_test):
        assert x.dtype == np.float32
    for y in (ds.y_train, ds.y_val, ds.y_test):
        assert y.dtype == np.int32
    np.testing.assert_array_equal(ds.x_train[..., 0], tr_img[:-n_val])
    np.testing.assert_array_equal(ds.x_val[..., 0], tr_img[-n_val:])
    np.testing.assert_array_equal(ds.y_train, tr_lab[:-n_val])
    np.testing.assert_array_equal(ds.y_val, tr_lab[-n_val:])
    np.testing.assert_array_equal(ds.x_test[..., 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])


def test_load_mnist_normalisation_is_invertible(tmp_path):
    arrays = make_mnist_arrays(seed=2)
    write_mnist(tmp_path / "mnist", arrays, gz=False)
    raw = data.load_mnist(tmp_path, normalize=False)
    ds = data.load_mnist(tmp_path)
    scaled = raw.x_train.astype(np.float64) / 255.0
    mean, std = scaled.mean(), scaled.std()
    assert abs(ds.x_train.mean()) < 1e-5 and abs(ds.x_train.std() - 1.0) < 1e-4
    for norm, pixels in ((ds.x_train, raw.x_train), (ds.x_val, raw.x_val), (ds.x_test, raw.x_test)):
        undone = (norm.astype(np.float64) * std + mean) * 255.0
        np.testing.assert_allclose(undone, pixels, atol=1e-3)
    np.testing.assert_array_equal(ds.y_train, raw.y_train)


def test_load_mnist_prefers_which_folder(tmp_path):
    top, sub = make_mnist_arrays(seed=3), make_mnist_arrays(seed=4)
    write_mnist(tmp_path, top, gz=False)
    write_mnist(tmp_path / "fashion_mnist", sub, gz=True)
    ds = data.load_mnist(tmp_path, "fashion_mnist", normalize=False)
    np.testing.assert_array_equal(ds.y_test, sub["t10k-labels-idx1-ubyte"])
    ds = data.load_mnist(tmp_path, "mnist", normalize=False)  # falls back to data_dir/
    np.testing.assert_array_equal(ds.y_test, top["t10k-labels-idx1-ubyte"])


def test_load_mnist_missing_names_files_and_source(tmp_path):
    with pytest.raises(data.DatasetMissing) as info:
        data.load_mnist(tmp_path, "fashion_mnist")
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for name in MNIST_NAMES:
        assert name in msg
    assert str(tmp_path / "fashion_mnist") in msg and "zalandoresearch" in msg


def test_load_mnist_incomplete_folder_is_missing(tmp_path):
    arrays = make_mnist_arrays(seed=5)
    del arrays["t10k-labels-idx1-ubyte"]
    write_mnist(tmp_path / "mnist", arrays, gz=False)
    with pytest.raises(data.DatasetMissing, match="t10k-labels-idx1-ubyte"):
        data.load_mnist(tmp_path)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    ("pos", "value"),
    [(3, 3), (2, 0x0D), (0, 1)],  # 3 dims for labels / float32 data / nonzero lead byte
)
def test_load_mnist_bad_magic(tmp_path, gz, pos, value):
    arrays = make_mnist_arrays(seed=6)
    write_mnist(tmp_path / "mnist", arrays, gz=gz)
    path = tmp_path / "mnist" / ("train-labels-idx1-ubyte" + (".gz" if gz else ""))
    raw = bytearray(idx_bytes(arrays["train-labels-idx1-ubyte"]))
    raw[pos] = value
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    with pytest.raises(ValueError, match="magic"):
        data.load_mnist(tmp_path)


def test_load_mnist_size_mismatch_and_bad_gzip(tmp_path):
    arrays = make_mnist_arrays(seed=7)
    write_mnist(tmp_path / "mnist", arrays, gz=False)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says shape"):
        data.load_mnist(tmp_path)
    path.unlink()
    path.with_name(path.name + ".gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read IDX"):
        data.load_mnist(tmp_path)


def test_load_mnist_label_count_mismatch(tmp_path):
    arrays = make_mnist_arrays(seed=8)
    arrays["t10k-labels-idx1-ubyte"] = arrays["t10k-labels-idx1-ubyte"][:-1]
    write_mnist(tmp_path / "mnist", arrays, gz=False)
    with pytest.raises(ValueError, match="labels"):
        data.load_mnist(tmp_path)


def test_load_mnist_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="which"):
        data.load_mnist(tmp_path, "kmnist")
    with pytest.raises(ValueError, match="data_dir"):
        data.load_mnist(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normalize"):
        data.load_mnist(tmp_path, normalize="yes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- cifar


def check_cifar(ds: data.Dataset, batches: dict[str, tuple]) -> None:
    train_imgs = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labs = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    n_val = 1  # 10% of 15 training images, at least one
    assert ds.x_train.shape == (14, 32, 32, 3) and ds.x_val.shape == (1, 32, 32, 3)
    assert ds.x_test.shape == (4, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_array_equal(ds.x_train, train_imgs[:-n_val])
    np.testing.assert_array_equal(ds.x_val, train_imgs[-n_val:])
    np.testing.assert_array_equal(ds.y_train, train_labs[:-n_val])
    np.testing.assert_array_equal(ds.y_val, train_labs[-n_val:])
    np.testing.assert_array_equal(ds.x_test, batches["test_batch"][0])
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][1])


def test_load_cifar10_folder(tmp_path):
    batches = make_cifar_batches(seed=10)
    write_cifar_folder(tmp_path, batches)
    check_cifar(data.load_cifar10(tmp_path, normalize=False), batches)
    # the batches folder itself is accepted too
    check_cifar(data.load_cifar10(tmp_path / "cifar-10-batches-py", normalize=False), batches)


def test_load_cifar10_archive(tmp_path):
    batches = make_cifar_batches(seed=11)
    write_cifar_archive(tmp_path, batches)
    assert not (tmp_path / "cifar-10-batches-py").exists()
    check_cifar(data.load_cifar10(str(tmp_path), normalize=False), batches)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]


def test_load_cifar10_per_channel_normalisation(tmp_path):
    batches = make_cifar_batches(seed=12)
    write_cifar_folder(tmp_path, batches)
    raw = data.load_cifar10(tmp_path, normalize=False)
    ds = data.load_cifar10(tmp_path)
    np.testing.assert_allclose(ds.x_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
    scaled = raw.x_train.astype(np.float64) / 255.0
    mean, std = scaled.mean(axis=(0, 1, 2)), scaled.std(axis=(0, 1, 2))
    assert not np.allclose(mean, mean[0])  # three genuinely different channels
    undone = (ds.x_test.astype(np.float64) * std + mean) * 255.0
    np.testing.assert_allclose(undone, raw.x_test, atol=1e-3)


def test_load_cifar10_missing(tmp_path):
    with pytest.raises(data.DatasetMissing) as info:
        data.load_cifar10(tmp_path / "nowhere")
    msg = str(info.value)
    for name in (*CIFAR_NAMES, "cifar-10-python.tar.gz", "cifar-10-batches-py"):
        assert name in msg
    assert "cs.toronto.edu" in msg


def test_load_cifar10_corrupt_batches(tmp_path):
    batches = make_cifar_batches(seed=13)
    folder = write_cifar_folder(tmp_path, batches)
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="data_batch_3"):
        data.load_cifar10(tmp_path)
    # a pickle referring to anything but numpy arrays is refused, not executed
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": datetime.date(2020, 1, 1)}))
    with pytest.raises(ValueError, match="refusing"):
        data.load_cifar10(tmp_path)
    wrong = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(wrong))
    with pytest.raises(ValueError, match="3072"):
        data.load_cifar10(tmp_path)


def test_load_cifar10_archive_missing_member(tmp_path):
    batches = make_cifar_batches(seed=14)
    del batches["test_batch"]
    write_cifar_archive(tmp_path, batches)
    with pytest.raises(ValueError, match="test_batch"):
        data.load_cifar10(tmp_path)


# --------------------------------------------------------------------------- digits


def test_load_digits_partition_and_determinism():
    from sklearn.datasets import load_digits as sk_digits

    ds = data.load_digits(seed=0, normalize=False)
    sizes = [len(ds.x_train), len(ds.x_val), len(ds.x_test)]
    assert sum(sizes) == 1797 and abs(sizes[0] - 0.6 * 1797) < 10
    assert abs(sizes[1] - sizes[2]) < 10
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert x.shape == (len(y), 64) and x.dtype == np.float32 and y.dtype == np.int32
    # The three splits together are exactly the full data set (as a multiset of rows),
    # so with the sizes adding up no example is in two splits.
    full = sk_digits()
    got = np.concatenate([np.c_[x, y] for x, y in
                          ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val),
                           (ds.x_test, ds.y_test))])
    want = np.c_[full.data, full.target]
    np.testing.assert_array_equal(np.unique(got, axis=0), np.unique(want, axis=0))
    np.testing.assert_array_equal(got[np.lexsort(got.T)], want[np.lexsort(want.T)])
    # stratified: every class in every split, in roughly the 60/20/20 ratio
    counts = np.bincount(ds.y_train, minlength=10) / np.bincount(full.target, minlength=10)
    assert np.all(np.abs(counts - 0.6) < 0.02)
    assert set(np.unique(ds.y_val)) == set(range(10)) == set(np.unique(ds.y_test))

    again = data.load_digits(seed=0, normalize=False)
    other = data.load_digits(seed=1, normalize=False)
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    assert not np.array_equal(other.y_train, ds.y_train)

    norm = data.load_digits(seed=0)
    std = norm.x_train.std(axis=0)
    assert np.all(np.abs(norm.x_train.mean(axis=0)) < 1e-5)
    assert np.all((np.abs(std - 1.0) < 1e-4) | (std == 0.0))  # constant pixels stay 0
    assert np.all(np.isfinite(norm.x_test))


def test_load_digits_bad_seed():
    with pytest.raises(ValueError, match="seed"):
        data.load_digits(seed=-1)
    with pytest.raises(ValueError, match="seed"):
        data.load_digits(seed=1.5)  # type: ignore[arg-type]


# -------------------------------------------------------------------------- mnist1d


def _no_generator(*args, **kwargs):
    raise AssertionError("make_dataset called although a valid cache exists")


def test_load_mnist1d_cache_roundtrip_and_tamper(tmp_path, monkeypatch):
    import mnist1d.data

    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    ds = data.load_mnist1d(tmp_path, seed=3, num_samples=200)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # global RNG untouched

    npz, meta = tmp_path / "mnist1d_seed3_n200.npz", tmp_path / "mnist1d_seed3_n200.json"
    assert npz.is_file() and meta.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [meta.name, npz.name]  # no temp files
    info = json.loads(meta.read_text())
    assert info["sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    assert info["generator_args"]["seed"] == 3 and info["generator_args"]["num_samples"] == 200

    # 200 samples -> 160 train (of which 16 validation) and 40 test, 40 features
    assert ds.x_train.shape == (144, 40) and ds.x_val.shape == (16, 40)
    assert ds.x_test.shape == (40, 40)
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int32
    assert set(np.unique(np.concatenate([ds.y_train, ds.y_val, ds.y_test]))) <= set(range(10))
    assert np.all(np.abs(ds.x_train.mean(axis=0)) < 1e-5)

    # reload: served from the cache, identical
    with monkeypatch.context() as m:
        m.setattr(mnist1d.data, "make_dataset", _no_generator)
        again = data.load_mnist1d(tmp_path, seed=3, num_samples=200)
    for a, b in zip(ds, again):
        np.testing.assert_array_equal(a, b)

    # tampered cache: warned about, regenerated, identical result, cache repaired
    blob = bytearray(npz.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    npz.write_bytes(bytes(blob))
    with pytest.warns(RuntimeWarning, match="sha256"):
        fixed = data.load_mnist1d(tmp_path, seed=3, num_samples=200)
    for a, b in zip(ds, fixed):
        np.testing.assert_array_equal(a, b)
    assert json.loads(meta.read_text())["sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest()

    # sidecar with other generator arguments -> regenerate as well
    info = json.loads(meta.read_text())
    info["generator_args"]["iid_noise_scale"] = 0.5
    meta.write_text(json.dumps(info))
    with pytest.warns(RuntimeWarning, match="arguments"):
        data.load_mnist1d(tmp_path, seed=3, num_samples=200)

    # missing sidecar -> regenerate
    meta.unlink()
    with pytest.warns(RuntimeWarning, match="invalid"):
        data.load_mnist1d(tmp_path, seed=3, num_samples=200)


def test_load_mnist1d_matches_generator(tmp_path):
    import mnist1d.data

    args = mnist1d.data.get_dataset_args()
    args.num_samples, args.seed = 100, 5
    state = np.random.get_state()
    ref = mnist1d.data.make_dataset(args)
    np.random.set_state(state)

    ds = data.load_mnist1d(tmp_path / "new" / "dir", seed=5, num_samples=100, normalize=False)
    np.testing.assert_array_equal(ds.x_train, ref["x"][:-8].astype(np.float32))
    np.testing.assert_array_equal(ds.x_val, ref["x"][-8:].astype(np.float32))
    np.testing.assert_array_equal(ds.y_val, ref["y"][-8:])
    np.testing.assert_array_equal(ds.x_test, ref["x_test"].astype(np.float32))
    np.testing.assert_array_equal(ds.y_test, ref["y_test"])
    other = data.load_mnist1d(tmp_path, seed=6, num_samples=100, normalize=False)
    assert not np.array_equal(other.x_test, ds.x_test)


def test_load_mnist1d_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_samples"):
        data.load_mnist1d(tmp_path, num_samples=55)
    with pytest.raises(ValueError, match="seed"):
        data.load_mnist1d(tmp_path, seed=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cache_dir"):
        data.load_mnist1d(42)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- text


def test_text_corpus_checksum_and_content():
    text = data.load_text_corpus()
    raw = text.encode("ascii")
    assert hashlib.sha256(raw).hexdigest() == data.CORPUS_SHA256
    assert 300_000 < len(raw) <= 400_000
    assert "\t" not in text and "\r" not in text and text.endswith("\n")


def test_text_corpus_checksum_mismatch(monkeypatch):
    monkeypatch.setattr(data, "CORPUS_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="sha256"):
        data.load_text_corpus()


def test_text_corpus_license_note_present():
    readme = Path(data.__file__).parent / "corpus" / "README.md"
    note = readme.read_text(encoding="utf-8")
    assert "Python Software Foundation License Version 2" in note
    assert data.CORPUS_SHA256 in note
    assert (readme.parent / "LICENSE-PYTHON.txt").is_file()


def test_text_corpus_generator_is_deterministic(tmp_path):
    """Rebuilding with the recorded Python version gives the stored bytes."""
    import platform
    import runpy

    readme = (Path(data.__file__).parent / "corpus" / "README.md").read_text()
    if f"Python {platform.python_version()} -->" not in readme:
        pytest.skip("corpus was generated with another Python version")
    tool = Path(__file__).resolve().parents[1] / "tools" / "make_docstring_corpus.py"
    if not tool.is_file():
        pytest.skip("tools/ not available (installed package)")
    module = runpy.run_path(str(tool))
    assert module["main"](["--out-dir", str(tmp_path)]) == 0
    built = (tmp_path / "stdlib_docstrings.txt").read_bytes()
    assert hashlib.sha256(built).hexdigest() == data.CORPUS_SHA256


def test_encode_chars():
    codes, vocab = data.encode_chars("banana\n")
    assert vocab == ["\n", "a", "b", "n"]
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, [2, 1, 3, 1, 3, 1, 0])
    assert "".join(vocab[c] for c in codes) == "banana\n"
    codes, vocab = data.encode_chars("z\u00e9a\U0001f600")
    assert vocab == sorted(set("z\u00e9a\U0001f600"))
    assert "".join(vocab[c] for c in codes) == "z\u00e9a\U0001f600"
    with pytest.raises(ValueError, match="text"):
        data.encode_chars("")
    with pytest.raises(ValueError, match="text"):
        data.encode_chars(b"abc")  # type: ignore[arg-type]
