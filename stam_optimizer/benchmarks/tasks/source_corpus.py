"""The CPython-source corpus: a frozen, offline character-level text of about 12 M characters.

The corpus is the Python source of the CPython 3.11.7 standard library without its
tests (PSF License v2), split *by file* into ``"train"`` (11.58 M characters, 695
files) and ``"validation"`` (0.52 M characters, 37 files); no file is in both. It is
shipped xz-compressed in ``stam_optimizer/benchmarks/tasks/corpus/source/`` with a
README (provenance, selection rule, counts, license) and ``manifest.json`` (the files
of each split), and is rebuilt by ``tools/make_source_corpus.py``.

:func:`load_source_corpus` decompresses a split, checks its sha256 against
:data:`SPLIT_SHA256` and caches the text for the life of the process;
:func:`source_vocabulary` is the character set of both splits (newline and the 95
printable ASCII characters) and :func:`encode` / :func:`decode` map text to ``uint8``
codes and back.

Example (a few characters only; a split loads in a fraction of a second)::

    >>> vocab = source_vocabulary()
    >>> len(vocab)
    96
    >>> codes = encode("def f():\\n", vocab)
    >>> codes.dtype, decode(codes, vocab) == "def f():\\n"
    (dtype('uint8'), True)
"""

from __future__ import annotations

import functools
import hashlib
import json
import lzma
from importlib import resources
from importlib.abc import Traversable
from typing import Any

import numpy as np

from stam_optimizer.benchmarks.tasks.data import DatasetMissing

__all__ = [
    "SOURCE_CORPUS_DIR",
    "SPLITS",
    "SPLIT_SHA256",
    "decode",
    "encode",
    "load_source_corpus",
    "source_corpus_manifest",
    "source_vocabulary",
]

#: The two splits, in the order the generator writes them.
SPLITS: tuple[str, ...] = ("train", "validation")
#: sha256 of each decompressed split (ASCII bytes); see ``tools/make_source_corpus.py``.
SPLIT_SHA256: dict[str, str] = {
    "train": "2ae3e49acaef9fcad6938fac2537d2b878ffb423e453785e9227826ae614406e",
    "validation": "d7f04e4e123f3a9c800beca31d3b3aee8cbfc604b084f60a6aa9ff0201927ded",
}
#: Folder of the corpus inside the ``stam_optimizer.benchmarks.tasks`` package.
SOURCE_CORPUS_DIR = ("corpus", "source")
MANIFEST_NAME = "manifest.json"
#: Newline and the printable ASCII characters, in code-point order.
_VOCABULARY = "\n" + "".join(chr(c) for c in range(32, 127))
_REGENERATE = "reinstall stam-optimizer or regenerate it with tools/make_source_corpus.py"


def _package_root() -> Traversable:
    root = resources.files("stam_optimizer.benchmarks.tasks")
    for part in SOURCE_CORPUS_DIR:
        root = root.joinpath(part)
    return root


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}; got {split!r}")


def _read_manifest(root: Traversable) -> dict[str, Any]:
    try:
        return json.loads(root.joinpath(MANIFEST_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DatasetMissing(
            f"source corpus manifest {MANIFEST_NAME} is missing from the "
            f"stam_optimizer.benchmarks.tasks package (corpus/source/); {_REGENERATE}"
        ) from err


def _read_split(root: Traversable, split: str, expected_sha256: str | None) -> str:
    """Decompress ``split`` from the corpus folder ``root`` and check its sha256."""
    _check_split(split)
    shards = _read_manifest(root)["splits"][split]["shards"]
    pieces = []
    for name in shards:
        try:
            blob = root.joinpath(name).read_bytes()
        except FileNotFoundError as err:
            raise DatasetMissing(
                f"source corpus file {name} ({split} split) is missing from the "
                f"stam_optimizer.benchmarks.tasks package (corpus/source/); {_REGENERATE}"
            ) from err
        pieces.append(lzma.decompress(blob))
    data = b"".join(pieces)
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise RuntimeError(
            f"source corpus split {split!r} ({', '.join(shards)}) decompresses to sha256 "
            f"{digest}, expected {expected_sha256}; the files were modified - restore them "
            f"or regenerate them with tools/make_source_corpus.py and update SPLIT_SHA256"
        )
    return data.decode("ascii")


@functools.cache
def load_source_corpus(split: str) -> str:
    """The ``"train"`` or ``"validation"`` text of the CPython-source corpus, sha256-checked.

    The text is decompressed once per process and cached. Each file of the split
    appears as a header line ``# file: Lib/<path>`` followed by its source; files are
    separated by an empty line.

    Raises ``ValueError`` for another ``split``, :class:`DatasetMissing` when a corpus
    file is missing and ``RuntimeError`` when the text does not match
    :data:`SPLIT_SHA256`.
    """
    _check_split(split)
    return _read_split(_package_root(), split, SPLIT_SHA256[split])


@functools.cache
def source_corpus_manifest() -> dict[str, Any]:
    """The corpus manifest: per split its files (path to character count), size and sha256.

    Cached and shared: do not modify it. Not covered by the sha256 check;
    :func:`load_source_corpus` uses it only to find the compressed shards of a split.
    """
    return _read_manifest(_package_root())


def source_vocabulary() -> str:
    """The characters of both splits, in code-point order: newline and printable ASCII.

    A character's code in :func:`encode` is its index in this string.
    """
    return _VOCABULARY


def encode(text: str, vocab: str) -> np.ndarray:
    """Map each character of ``text`` to its index in ``vocab``; a 1-D ``uint8`` array.

    ``vocab`` holds at most 256 distinct characters (for the corpus,
    :func:`source_vocabulary`). Raises ``ValueError`` naming the first character of
    ``text`` that is not in ``vocab``.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    if not isinstance(vocab, str) or not vocab:
        raise ValueError("vocab must be a non-empty str")
    if len(vocab) > 256 or len(set(vocab)) != len(vocab):
        raise ValueError(f"vocab must hold at most 256 distinct characters, got {len(vocab)} "
                         f"characters of which {len(set(vocab))} distinct")
    vocab_points = np.frombuffer(vocab.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    if text.isascii() and int(vocab_points.max()) < 128:
        # Fast path: a 128-entry lookup table over the ASCII bytes.
        points = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        table = np.full(128, -1, dtype=np.int16)
        table[vocab_points] = np.arange(len(vocab), dtype=np.int16)
        codes = table[points]
    else:
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        order = np.argsort(vocab_points)
        sorted_points = vocab_points[order]
        pos = np.minimum(np.searchsorted(sorted_points, points), len(vocab) - 1)
        codes = np.where(sorted_points[pos] == points, order[pos], -1)
    bad = np.flatnonzero(codes < 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"text character {text[i]!r} at index {i} is not in vocab "
                         f"({bad.size} characters of text are not)")
    return codes.astype(np.uint8)


def decode(codes: np.ndarray, vocab: str) -> str:
    """Inverse of :func:`encode`: the characters of ``vocab`` at the given codes."""
    chars = np.array(list(vocab))
    return "".join(chars[np.asarray(codes, dtype=np.int64)].tolist())
