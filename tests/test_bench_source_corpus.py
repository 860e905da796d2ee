"""Tests of the CPython-source corpus (stam_optimizer.benchmarks.tasks.source_corpus)."""

from __future__ import annotations

import hashlib
import platform
import re
import runpy
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from stam_optimizer.benchmarks.tasks import source_corpus as sc

CORPUS_DIR = Path(sc.__file__).parent.joinpath(*sc.SOURCE_CORPUS_DIR)
TOOL = Path(__file__).resolve().parents[1] / "tools" / "make_source_corpus.py"
HEADER = re.compile(r"^# file: (Lib/\S+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    return {split: sc.load_source_corpus(split) for split in sc.SPLITS}


@pytest.fixture(scope="module")
def manifest() -> dict:
    return sc.source_corpus_manifest()


def readme_table() -> dict[str, tuple[int, int, str]]:
    """split -> (files, characters, sha256) from the README's table."""
    readme = (CORPUS_DIR / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (train|validation) \| (\d+) \| (\d+) \| `([0-9a-f]{64})` \|$",
                      readme, re.MULTILINE)
    return {split: (int(n), int(chars), digest) for split, n, chars, digest in rows}


def test_checksums_match(texts):
    for split, text in texts.items():
        assert hashlib.sha256(text.encode("ascii")).hexdigest() == sc.SPLIT_SHA256[split]


def test_checksum_mismatch_raises(monkeypatch):
    monkeypatch.setitem(sc.SPLIT_SHA256, "validation", "0" * 64)
    sc.load_source_corpus.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="sha256"):
            sc.load_source_corpus("validation")
    finally:
        sc.load_source_corpus.cache_clear()


def test_bad_split_names_the_argument():
    with pytest.raises(ValueError, match=r"split must be one of 'train', 'validation'; got 'test'"):
        sc.load_source_corpus("test")


def test_load_is_cached():
    assert sc.load_source_corpus("validation") is sc.load_source_corpus("validation")


def test_split_sizes_match_readme_and_manifest(texts, manifest):
    table = readme_table()
    assert set(table) == set(sc.SPLITS)
    for split, text in texts.items():
        n_files, chars, digest = table[split]
        entry = manifest["splits"][split]
        assert len(text) == chars == entry["characters"]
        assert len(HEADER.findall(text)) == n_files == len(entry["files"])
        assert digest == entry["sha256"] == sc.SPLIT_SHA256[split]
    # Sizes asked for by the one-Chinchilla runs: >= 10 M training characters,
    # validation a few percent of the whole.
    assert len(texts["train"]) >= 10_000_000
    share = len(texts["validation"]) / (len(texts["train"]) + len(texts["validation"]))
    assert 0.02 <= share <= 0.05


def test_no_file_in_both_splits(texts, manifest):
    files = {split: manifest["splits"][split]["files"] for split in sc.SPLITS}
    assert not set(files["train"]) & set(files["validation"])
    for split, text in texts.items():
        # The headers in the text are the manifest's files, in order, and the per-file
        # character counts add up (one separating newline between files).
        assert HEADER.findall(text) == list(files[split])
        assert sum(files[split].values()) + len(files[split]) - 1 == len(text)
        for path in files[split]:
            digest = hashlib.sha256(path.encode()).digest()
            assert (int.from_bytes(digest, "big") % 25 == 0) == (split == "validation"), path
    # Test suites are excluded.
    for path in [*files["train"], *files["validation"]]:
        assert not {"test", "tests", "idle_test"} & set(path.split("/")[:-1]), path


def test_vocabulary_covers_both_splits(texts, manifest):
    vocab = sc.source_vocabulary()
    assert len(vocab) == len(set(vocab)) == 96
    assert list(vocab) == sorted(vocab)
    assert set(texts["train"]) | set(texts["validation"]) == set(vocab)
    assert manifest["vocabulary"] == vocab
    codes = sc.encode(texts["validation"], vocab)
    assert codes.dtype == np.uint8 and codes.shape == (len(texts["validation"]),)
    assert sc.decode(codes[:5000], vocab) == texts["validation"][:5000]


def test_compressed_files_are_small():
    sizes = {p.name: p.stat().st_size for p in CORPUS_DIR.glob("*.txt.xz")}
    assert sizes and max(sizes.values()) <= 3_500_000, sizes


def test_license_note_present():
    readme = (CORPUS_DIR / "README.md").read_text(encoding="utf-8")
    assert "Python Software Foundation License Version 2" in readme
    assert "../LICENSE-PYTHON.txt" in readme
    assert (CORPUS_DIR.parent / "LICENSE-PYTHON.txt").is_file()


def test_encode_decode():
    vocab = "\nab"
    codes = sc.encode("ab\nba", vocab)
    np.testing.assert_array_equal(codes, [1, 2, 0, 2, 1])
    assert codes.dtype == np.uint8
    assert sc.decode(codes, vocab) == "ab\nba"
    # Non-ASCII vocabularies take the general path.
    np.testing.assert_array_equal(sc.encode("\u00e9a\U0001f600", "a\U0001f600\u00e9"), [2, 0, 1])
    assert sc.encode("", vocab).shape == (0,)
    with pytest.raises(ValueError, match=r"'c' at index 2 is not in vocab"):
        sc.encode("abc", vocab)
    with pytest.raises(ValueError, match="character '\u00e9' at index 0"):
        sc.encode("\u00e9", vocab)
    with pytest.raises(ValueError, match="distinct"):
        sc.encode("a", "aa")
    with pytest.raises(ValueError, match="text must be a str"):
        sc.encode(b"ab", vocab)  # type: ignore[arg-type]


def _pinned_lib() -> Path:
    if not TOOL.is_file():
        pytest.skip("tools/make_source_corpus.py not available (installed package)")
    tool = runpy.run_path(str(TOOL))
    if platform.python_version() != tool["PINNED_CPYTHON"]:
        pytest.skip(f"needs CPython {tool['PINNED_CPYTHON']}'s Lib/ (running "
                    f"{platform.python_version()})")
    lib = Path(sysconfig.get_paths()["stdlib"])
    if not (lib / "os.py").is_file():
        pytest.skip(f"no standard-library sources in {lib}")
    return lib


def test_generator_is_deterministic(tmp_path, manifest):
    """Rebuilding from CPython 3.11.7's Lib/ gives the shipped texts (sharded here)."""
    lib = _pinned_lib()
    tool = runpy.run_path(str(TOOL))
    # Fast xz preset and small shards: the texts must not depend on either.
    argv = ["--lib-dir", str(lib), "--out-dir", str(tmp_path),
            "--preset", "0", "--max-shard-bytes", "1500000"]
    assert tool["main"](argv) == 0
    built = sc._read_manifest(tmp_path)
    assert len(built["splits"]["train"]["shards"]) > 1
    for split in sc.SPLITS:
        assert built["splits"][split]["files"] == manifest["splits"][split]["files"]
        text = sc._read_split(tmp_path, split, sc.SPLIT_SHA256[split])
        assert text == sc.load_source_corpus(split)
    for key in ("vocabulary", "non_ascii_replaced", "validation_rule", "source"):
        assert built[key] == manifest[key]
