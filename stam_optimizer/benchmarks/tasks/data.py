"""Offline data loaders for the stam-bench task suites (numpy only).

Every loader returns a :class:`Dataset` of train / validation / test arrays with
``x`` as float32 and ``y`` as int32 labels. Nothing is ever downloaded:

* :func:`load_digits` uses the copy bundled with scikit-learn;
* :func:`load_mnist1d` runs MNIST-1D's procedural generator and caches the result;
* :func:`load_mnist` and :func:`load_cifar10` read the standard distribution files
  from a folder the user provides and raise :class:`DatasetMissing` (with the file
  names and where to get them) when they are not there;
* :func:`load_text_corpus` reads the frozen docstring snapshot shipped in
  ``stam_optimizer/benchmarks/tasks/corpus/``.

Normalisation (``normalize=True``, the default) uses statistics of the training
split only: tabular features are standardised per feature; images are scaled to
[0, 1] and then standardised per channel. With ``normalize=False`` the raw values
are returned as float32 (pixel values 0..255 for images).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import random
import tarfile
import warnings
import zipfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

from stam_optimizer.benchmarks.programme.records import write_atomic

__all__ = [
    "CORPUS_SHA256",
    "Dataset",
    "DatasetMissing",
    "encode_chars",
    "load_cifar10",
    "load_digits",
    "load_mnist",
    "load_mnist1d",
    "load_text_corpus",
]

#: sha256 of ``corpus/stdlib_docstrings.txt`` (see ``tools/make_docstring_corpus.py``).
CORPUS_SHA256 = "0eed3f591854a2622bb84288df703b40cb5a1b09bb5be6886e16779ae436c6c4"
CORPUS_FILE = "stdlib_docstrings.txt"

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_MNIST_SOURCES = {
    "mnist": (
        "https://yann.lecun.com/exdb/mnist/ (mirror used by torchvision: "
        "https://ossci-datasets.s3.amazonaws.com/mnist/)"
    ),
    "fashion_mnist": (
        "https://github.com/zalandoresearch/fashion-mnist (folder data/fashion/, or "
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/)"
    ),
}
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version)"

_MNIST1D_DEFAULT_SAMPLES = 5000
_STD_FLOOR = 1e-8


class Dataset(NamedTuple):
    """Train / validation / test split: ``x`` float32, ``y`` int32 class labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class DatasetMissing(FileNotFoundError):
    """The files of a dataset are not where the loader looked for them."""


# --------------------------------------------------------------------------- helpers


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _check_dir(value: Any, name: str) -> Path:
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{name} must be a str or os.PathLike path, got {value!r}")
    path = Path(value)
    if str(value) == "":
        raise ValueError(f"{name} must not be empty")
    return path


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _n_val(n_train: int) -> int:
    """Validation size carved from the end of a train split: 5000, or 10% if smaller."""
    if n_train < 2:
        raise ValueError(f"need at least 2 training examples to carve a validation split, "
                         f"got {n_train}")
    return max(1, min(5000, n_train // 10))


def _standardise(
    x_train: np.ndarray, *others: np.ndarray, axis: tuple[int, ...]
) -> tuple[np.ndarray, ...]:
    """Centre and scale by train statistics reduced over ``axis`` (float64 maths)."""
    ref = x_train.astype(np.float64)
    mean = ref.mean(axis=axis, keepdims=True)
    std = ref.std(axis=axis, keepdims=True)
    std = np.where(std < _STD_FLOOR, 1.0, std)
    return tuple(((a.astype(np.float64) - mean) / std).astype(np.float32)
                 for a in (x_train, *others))


def _finish(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    normalize: bool,
    image: bool,
) -> Dataset:
    """Carve validation from the end of train, normalise, cast to float32 / int32."""
    n_val = _n_val(len(x_train))
    x_tr, x_val = x_train[:-n_val], x_train[-n_val:]
    y_tr, y_val = y_train[:-n_val], y_train[-n_val:]
    return _package(x_tr, y_tr, x_val, y_val, x_test, y_test, normalize=normalize, image=image)


def _package(
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_te: np.ndarray,
    y_te: np.ndarray,
    *,
    normalize: bool,
    image: bool,
) -> Dataset:
    if normalize:
        if image:
            # pixels -> [0, 1], then per-channel statistics over (n, h, w)
            scaled = [a.astype(np.float64) / 255.0 for a in (x_tr, x_val, x_te)]
            x_tr, x_val, x_te = _standardise(*scaled, axis=(0, 1, 2))
        else:
            x_tr, x_val, x_te = _standardise(x_tr, x_val, x_te, axis=(0,))
    xs = [np.ascontiguousarray(a, dtype=np.float32) for a in (x_tr, x_val, x_te)]
    ys = [np.ascontiguousarray(a, dtype=np.int32) for a in (y_tr, y_val, y_te)]
    return Dataset(xs[0], ys[0], xs[1], ys[1], xs[2], ys[2])


# ----------------------------------------------------------------------------- digits


def load_digits(seed: int = 0, *, normalize: bool = True) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 x 64 features), stratified 60/20/20 split.

    Each class is shuffled with ``np.random.default_rng(seed)`` and cut 60/20/20;
    the three splits are then shuffled. Features are standardised on train.
    """
    seed = _check_seed(seed)
    normalize = _check_flag(normalize, "normalize")
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_train = int(round(0.6 * len(idx)))
        n_val = int(round(0.2 * len(idx)))
        parts[0].append(idx[:n_train])
        parts[1].append(idx[n_train:n_train + n_val])
        parts[2].append(idx[n_train + n_val:])
    tr, va, te = (rng.permutation(np.concatenate(p)) for p in parts)
    return _package(x[tr], y[tr], x[va], y[va], x[te], y[te], normalize=normalize, image=False)


# ---------------------------------------------------------------------------- mnist1d


def _mnist1d_args(seed: int, num_samples: int) -> tuple[Any, dict[str, Any]]:
    from mnist1d.data import get_dataset_args

    args = get_dataset_args()
    args.seed = seed
    args.num_samples = num_samples
    record = {k: v for k, v in vars(args).items() if k != "url"}
    return args, record


def _mnist1d_generate(args: Any) -> dict[str, np.ndarray]:
    """Run MNIST-1D's generator (it seeds the global RNGs, which are restored after)."""
    from mnist1d.data import make_dataset

    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x": np.asarray(raw["x"], dtype=np.float64),
        "y": np.asarray(raw["y"], dtype=np.int64),
        "x_test": np.asarray(raw["x_test"], dtype=np.float64),
        "y_test": np.asarray(raw["y_test"], dtype=np.int64),
    }


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz archive with fixed timestamps, so equal arrays give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]),
                                          allow_pickle=False)
    return buf.getvalue()


def _mnist1d_read_cache(
    npz: Path, meta: Path, record: dict[str, Any]
) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """Return (arrays, None) for a valid cache, else (None, reason) - reason None if absent."""
    if not npz.exists() and not meta.exists():
        return None, None
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        data = npz.read_bytes()
    except (OSError, ValueError) as err:
        return None, f"cannot read the cache ({err})"
    if not isinstance(info, dict) or info.get("generator_args") != record:
        return None, "generator arguments differ from the cached ones"
    if hashlib.sha256(data).hexdigest() != info.get("sha256"):
        return None, "sha256 of the cached file does not match its sidecar"
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        return None, f"cannot parse the cached arrays ({err})"
    return arrays, None


def load_mnist1d(
    cache_dir: str | os.PathLike[str],
    seed: int = 0,
    *,
    num_samples: int = _MNIST1D_DEFAULT_SAMPLES,
    normalize: bool = True,
) -> Dataset:
    """MNIST-1D (40-long 1-D signals, 10 classes) from its procedural generator.

    ``seed`` is the generator seed. The generated arrays are cached as
    ``<cache_dir>/mnist1d_seed<seed>.npz`` (``..._n<num_samples>.npz`` for a
    non-default size) with a JSON sidecar holding their sha256 and the generator
    arguments; a cache that fails the check is regenerated with a warning. The
    validation split is the last 10% of the generator's train split (80% of the data).
    """
    seed = _check_seed(seed)
    cache = _check_dir(cache_dir, "cache_dir")
    normalize = _check_flag(normalize, "normalize")
    if (isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer))
            or num_samples < 50 or num_samples % 10):
        raise ValueError(f"num_samples must be a multiple of 10 and >= 50, got {num_samples!r}")
    num_samples = int(num_samples)

    stem = f"mnist1d_seed{seed}"
    if num_samples != _MNIST1D_DEFAULT_SAMPLES:
        stem += f"_n{num_samples}"
    npz, meta = cache / f"{stem}.npz", cache / f"{stem}.json"
    args, record = _mnist1d_args(seed, num_samples)

    arrays, reason = _mnist1d_read_cache(npz, meta, record)
    if arrays is None:
        if reason is not None:
            warnings.warn(f"MNIST-1D cache {npz} is invalid ({reason}); regenerating it",
                          RuntimeWarning, stacklevel=2)
        arrays = _mnist1d_generate(args)
        data = _npz_bytes(arrays)
        info = {"sha256": hashlib.sha256(data).hexdigest(), "generator_args": record,
                "file": npz.name}
        cache.mkdir(parents=True, exist_ok=True)
        write_atomic(npz, data)
        write_atomic(meta, (json.dumps(info, indent=1, sort_keys=True) + "\n").encode())
    return _finish(arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"],
                   normalize=normalize, image=False)


# ------------------------------------------------------------------------------ mnist


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (optionally gzipped) and check its header."""
    opener: Callable[..., IO[bytes]] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read IDX file ({err})") from err
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] != ndim:
        raise ValueError(
            f"{path}: bad IDX magic number {data[:4].hex()} "
            f"(expected 000008{ndim:02x}: unsigned bytes, {ndim} dimension(s))"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - offset != expected:
        raise ValueError(
            f"{path}: IDX header says shape {dims} ({expected} bytes of data) but the file "
            f"holds {len(data) - offset}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find_mnist_files(root: Path, which: str) -> dict[str, Path]:
    dirs = [root / which, root / which / "raw", root]
    for d in dirs:
        found: dict[str, Path] = {}
        for name in _MNIST_FILES:
            for candidate in (d / name, d / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if len(found) == len(_MNIST_FILES):
            return found
    searched = ", ".join(str(d) for d in dirs)
    raise DatasetMissing(
        f"{which} not found: searched {searched} for the IDX files "
        f"{', '.join(_MNIST_FILES)} (each may also end in .gz). "
        f"Get them from {_MNIST_SOURCES[which]} and put them in {root / which}."
    )


def load_mnist(
    data_dir: str | os.PathLike[str], which: str = "mnist", *, normalize: bool = True
) -> Dataset:
    """MNIST or Fashion-MNIST from the standard IDX files, x of shape (n, 28, 28, 1).

    Looks in ``data_dir/<which>/``, then ``data_dir/<which>/raw/`` (torchvision's
    layout), then ``data_dir/``; each file may be gzipped. The validation split is
    the last 5000 training images (10% if that is smaller).
    """
    if which not in _MNIST_SOURCES:
        raise ValueError(f"which must be one of {sorted(_MNIST_SOURCES)}, got {which!r}")
    root = _check_dir(data_dir, "data_dir")
    normalize = _check_flag(normalize, "normalize")
    files = _find_mnist_files(root, which)
    arrays = {}
    for name, path in files.items():
        arrays[name] = _read_idx(path, ndim=3 if "images" in name else 1)
    for split, n_img in (("train", "train"), ("test", "t10k")):
        images = arrays[f"{n_img}-images-idx3-ubyte"]
        labels = arrays[f"{n_img}-labels-idx1-ubyte"]
        if images.shape[1:] != (28, 28):
            raise ValueError(f"{files[f'{n_img}-images-idx3-ubyte']}: expected 28x28 images, "
                             f"got {images.shape[1:]}")
        if len(images) != len(labels):
            raise ValueError(f"{which} {split}: {len(images)} images but {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise ValueError(f"{files[f'{n_img}-labels-idx1-ubyte']}: label > 9 found")
    x_train = arrays["train-images-idx3-ubyte"][..., None]
    x_test = arrays["t10k-images-idx3-ubyte"][..., None]
    return _finish(x_train, arrays["train-labels-idx1-ubyte"], x_test,
                   arrays["t10k-labels-idx1-ubyte"], normalize=normalize, image=True)


# ---------------------------------------------------------------------------- cifar10


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays (the content of CIFAR-10 batches)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes inside protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")


def _parse_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # any unpickling failure means a corrupt / foreign file
        raise ValueError(f"{where}: not a CIFAR-10 python batch ({err})") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{where}: expected a dict with keys b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{where}: b'data' must be uint8 of shape (n, 3072), "
                         f"got {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: b'labels' must be {len(data)} integers")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{where}: labels outside 0..9")
    # rows are 1024 red, 1024 green, 1024 blue values, each 32x32 row-major
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int64)


def _cifar_from_folder(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {name: _parse_cifar_batch((folder / name).read_bytes(), str(folder / name))
            for name in (*_CIFAR_TRAIN, _CIFAR_TEST)}


def _cifar_from_archive(archive: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        tar = tarfile.open(archive, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ValueError(f"{archive}: not a readable .tar.gz archive ({err})") from err
    with tar:
        members = {}
        for m in tar.getmembers():
            name = m.name[2:] if m.name.startswith("./") else m.name
            if m.isfile():
                members[name] = m
        out = {}
        for name in (*_CIFAR_TRAIN, _CIFAR_TEST):
            member = members.get(f"{_CIFAR_DIR}/{name}")
            if member is None:
                raise ValueError(f"{archive}: member {_CIFAR_DIR}/{name} missing")
            f = tar.extractfile(member)
            if f is None:
                raise ValueError(f"{archive}: cannot read member {member.name}")
            out[name] = _parse_cifar_batch(f.read(), f"{archive}:{member.name}")
    return out


def load_cifar10(data_dir: str | os.PathLike[str], *, normalize: bool = True) -> Dataset:
    """CIFAR-10 (python version), x of shape (n, 32, 32, 3).

    Reads ``data_dir/cifar-10-batches-py/`` (or ``data_dir`` itself if it is that
    folder), else the archive ``data_dir/cifar-10-python.tar.gz`` in memory without
    extracting it. The validation split is the last 5000 training images (10% if
    that is smaller). Batches are unpickled with an unpickler that only accepts
    numpy arrays.
    """
    root = _check_dir(data_dir, "data_dir")
    normalize = _check_flag(normalize, "normalize")
    needed = (*_CIFAR_TRAIN, _CIFAR_TEST)
    folders = [root / _CIFAR_DIR, root]
    batches = None
    for folder in folders:
        if all((folder / n).is_file() for n in needed):
            batches = _cifar_from_folder(folder)
            break
    if batches is None and (root / _CIFAR_ARCHIVE).is_file():
        batches = _cifar_from_archive(root / _CIFAR_ARCHIVE)
    if batches is None:
        raise DatasetMissing(
            f"CIFAR-10 not found: searched {folders[0]} (and {folders[1]}) for the files "
            f"{', '.join(needed)}, and {root / _CIFAR_ARCHIVE} for the archive. "
            f"Get {_CIFAR_ARCHIVE} from {_CIFAR_SOURCE} and put it (or its extracted "
            f"{_CIFAR_DIR}/ folder) in {root}."
        )
    x_train = np.concatenate([batches[n][0] for n in _CIFAR_TRAIN])
    y_train = np.concatenate([batches[n][1] for n in _CIFAR_TRAIN])
    x_test, y_test = batches[_CIFAR_TEST]
    return _finish(x_train, y_train, x_test, y_test, normalize=normalize, image=True)


# ------------------------------------------------------------------------------- text


def load_text_corpus() -> str:
    """The frozen docstring corpus (CPython stdlib, PSF License v2), sha256-checked."""
    resource = resources.files("stam_optimizer.benchmarks.tasks").joinpath("corpus", CORPUS_FILE)
    try:
        data = resource.read_bytes()
    except FileNotFoundError as err:
        raise DatasetMissing(
            f"text corpus {CORPUS_FILE} is missing from the stam_optimizer.benchmarks.tasks "
            f"package (corpus/ folder); reinstall stam-optimizer or regenerate it with "
            f"tools/make_docstring_corpus.py"
        ) from err
    digest = hashlib.sha256(data).hexdigest()
    if digest != CORPUS_SHA256:
        raise RuntimeError(
            f"text corpus {CORPUS_FILE} has sha256 {digest}, expected {CORPUS_SHA256}; "
            f"the file was modified - restore it or regenerate it with "
            f"tools/make_docstring_corpus.py and update CORPUS_SHA256"
        )
    return data.decode("ascii")


def encode_chars(text: str) -> tuple[np.ndarray, list[str]]:
    """Map each character to its index in the sorted vocabulary; returns (int32 codes, vocab)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    if not text:
        raise ValueError("text must not be empty")
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    vocab_points, codes = np.unique(points, return_inverse=True)
    vocab = [chr(int(p)) for p in vocab_points]
    return codes.astype(np.int32).reshape(-1), vocab
