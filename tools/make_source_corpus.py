"""Build the frozen CPython-source corpus (train and validation splits) for stam-bench.

The corpus is the Python source of the CPython 3.11.7 standard library (``Lib/``)
without its tests, split *by file* into a training and a validation text. Nothing
is imported or executed; the files are only read. Selection rule (see
:func:`select_files` and :func:`is_validation`):

* every ``*.py`` file under the library folder, in sorted order of its relative POSIX
  path, except
  - files with a path component ``test``, ``tests`` or ``idle_test`` (the test suites:
    ``test/``, ``unittest/test/``, ``lib2to3/tests/``, ``idlelib/idle_test/``,
    ``ctypes/test/``, ``tkinter/test/``, ``distutils/tests/``),
  - the installed-only folders ``site-packages/``, ``lib-dynload/``, ``config-*/``,
    ``__pycache__/`` and the build-generated ``_sysconfigdata_*.py``
    (none of these is part of CPython's ``Lib/`` source folder);
* a file goes to the validation split when the sha256 of ``"Lib/<relative path>"``
  (UTF-8), read as a big-endian integer, is divisible by ``VALIDATION_MODULUS`` (25);
  all other files go to training.

Text normalisation (see :func:`normalise`): files are decoded as strict UTF-8,
``\\r\\n`` and ``\\r`` become ``\\n``, tabs are expanded to 8 columns, and every
character outside printable ASCII plus newline is replaced: typographic quotes and
dashes by their ASCII forms (``NON_ASCII``), other characters by the ASCII part of
their NFKD decomposition, and ``?`` if that is empty. A file ends with a newline.
Each file is preceded by a header line ``# file: Lib/<relative path>`` and files are
separated by one empty line, so the path is part of the text.

Outputs, in ``--out-dir`` (default: the package's ``corpus/source/`` folder):

* ``train.txt.xz`` and ``validation.txt.xz`` (xz, preset 9 extreme; train is split
  into ``train-NN.txt.xz`` shards if it would exceed ``--max-shard-bytes``),
* ``manifest.json`` (files per split with character counts, sha256 of each
  decompressed split, shard names) and
* ``README.md`` (provenance, selection rule, counts, hashes, license note).

It prints the counts and sha256 of each split; paste the two sha256 values into
``stam_optimizer/benchmarks/tasks/source_corpus.py`` (``SPLIT_SHA256``) after
regenerating. Only the xz bytes may depend on the liblzma version; the
decompressed texts depend only on the library folder read.

Usage::

    python tools/make_source_corpus.py [--lib-dir DIR] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import platform
import sys
import sysconfig
import unicodedata
from pathlib import Path
from typing import Any

#: The CPython release whose ``Lib/`` folder is the pinned source.
PINNED_CPYTHON = "3.11.7"
#: A file is a validation file when sha256("Lib/<path>") is divisible by this number.
VALIDATION_MODULUS = 25
#: Path components that mark a test suite.
TEST_DIRS = frozenset({"test", "tests", "idle_test"})
#: Top-level folders of an installed library that are not in CPython's ``Lib/``.
INSTALLED_ONLY_DIRS = frozenset({"site-packages", "lib-dynload", "__pycache__"})
#: Replacements for the non-ASCII characters that have an obvious ASCII spelling.
NON_ASCII: dict[str, str] = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"',
    "\u2013": "-", "\u2014": "--", "\u2212": "-",
    "\u2026": "...", "\u00a0": " ",
    "\u00df": "ss", "\u00b1": "+-", "\u00b5": "u", "\u03bc": "u",
}
SPLITS = ("train", "validation")
XZ_PRESET = 9 | lzma.PRESET_EXTREME
DEFAULT_MAX_SHARD_BYTES = 3_500_000
MANIFEST_NAME = "manifest.json"
README_NAME = "README.md"
LICENSE_REF = "../LICENSE-PYTHON.txt"
_DEFAULT_OUT = (Path(__file__).resolve().parents[1]
                / "stam_optimizer" / "benchmarks" / "tasks" / "corpus" / "source")
_ALLOWED = frozenset("\n" + "".join(chr(c) for c in range(32, 127)))


def select_files(lib_dir: Path) -> list[str]:
    """Relative POSIX paths of the library's non-test ``*.py`` source files, sorted."""
    selected = []
    for path in lib_dir.rglob("*.py"):
        rel = path.relative_to(lib_dir)
        parts = rel.parts
        if parts[0] in INSTALLED_ONLY_DIRS or parts[0].startswith("config-"):
            continue
        if "__pycache__" in parts or TEST_DIRS.intersection(parts[:-1]):
            continue
        if rel.name.startswith("_sysconfigdata_"):
            continue
        if path.is_file():
            selected.append(rel.as_posix())
    return sorted(selected)


def is_validation(rel: str, modulus: int = VALIDATION_MODULUS) -> bool:
    """Whether ``Lib/<rel>`` belongs to the validation split (a hash bucket of its path).

    >>> is_validation("os.py"), is_validation("ast.py")
    (True, False)
    """
    digest = hashlib.sha256(f"Lib/{rel}".encode()).digest()
    return int.from_bytes(digest, "big") % modulus == 0


def _replace(ch: str) -> str:
    if ch in NON_ASCII:
        return NON_ASCII[ch]
    ascii_part = "".join(c for c in unicodedata.normalize("NFKD", ch) if c in _ALLOWED)
    return ascii_part if ascii_part and ascii_part != "\n" else "?"


def normalise(text: str) -> tuple[str, int]:
    """Map a source file's text onto printable ASCII plus newline.

    Returns the text (ending in a newline) and the number of characters replaced.

    >>> normalise("caf\\u00e9 \\u201cx\\u201d\\tend\\r\\n")
    ('cafe "x"        end\\n', 3)
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(8)
    replaced = 0
    if not _ALLOWED.issuperset(text):
        pieces = []
        for ch in text:
            if ch in _ALLOWED:
                pieces.append(ch)
            else:
                pieces.append(_replace(ch))
                replaced += 1
        text = "".join(pieces)
    if not text.endswith("\n"):
        text += "\n"
    return text, replaced


def file_chunk(rel: str, text: str) -> str:
    """One file's contribution to a split: a header line then its normalised text."""
    return f"# file: Lib/{rel}\n{text}"


def build_corpus(lib_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Read ``lib_dir`` and return the split texts and the manifest (without shard names)."""
    chunks: dict[str, list[str]] = {split: [] for split in SPLITS}
    files: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    replaced_total = 0
    for rel in select_files(lib_dir):
        raw = (lib_dir / rel).read_bytes().decode("utf-8")
        text, replaced = normalise(raw)
        replaced_total += replaced
        split = "validation" if is_validation(rel) else "train"
        chunk = file_chunk(rel, text)
        chunks[split].append(chunk)
        files[split][f"Lib/{rel}"] = len(chunk)
    texts = {split: "\n".join(chunks[split]) for split in SPLITS}
    manifest: dict[str, Any] = {
        "source": f"CPython {PINNED_CPYTHON} Lib/ (Python source files, tests excluded)",
        "generator": "tools/make_source_corpus.py",
        "validation_rule": (f"int.from_bytes(sha256(b'Lib/<path>'), 'big') % "
                            f"{VALIDATION_MODULUS} == 0"),
        "non_ascii_replaced": replaced_total,
        "vocabulary": "".join(sorted(set(texts["train"]) | set(texts["validation"]))),
        "splits": {
            split: {
                "characters": len(texts[split]),
                "sha256": hashlib.sha256(texts[split].encode("ascii")).hexdigest(),
                "files": files[split],
            }
            for split in SPLITS
        },
    }
    return texts, manifest


def shard_text(text: str, n_shards: int) -> list[str]:
    """Cut a split at file boundaries into ``n_shards`` pieces of similar length.

    Joining the pieces with ``""`` gives back ``text``.
    """
    if n_shards == 1:
        return [text]
    starts = [0]
    target = len(text) / n_shards
    for k in range(1, n_shards):
        cut = text.find("\n# file: Lib/", int(k * target))
        if cut < 0 or cut + 1 <= starts[-1]:
            raise ValueError(f"cannot cut the text into {n_shards} shards at file boundaries")
        starts.append(cut + 1)
    bounds = [*starts, len(text)]
    return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def compress_split(split: str, text: str, max_shard_bytes: int,
                   preset: int = XZ_PRESET) -> dict[str, bytes]:
    """xz-compress a split, sharding it until every file is at most ``max_shard_bytes``."""
    data = text.encode("ascii")
    blob = lzma.compress(data, preset=preset)
    if len(blob) <= max_shard_bytes:
        return {f"{split}.txt.xz": blob}
    n_shards = -(-len(blob) // max_shard_bytes)
    while True:
        pieces = shard_text(text, n_shards)
        blobs = {f"{split}-{k:02d}.txt.xz": lzma.compress(p.encode("ascii"), preset=preset)
                 for k, p in enumerate(pieces)}
        if max(len(b) for b in blobs.values()) <= max_shard_bytes:
            return blobs
        n_shards += 1


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _file_list(files: dict[str, int]) -> str:
    return "\n".join(f"- `{name}` ({chars} characters)" for name, chars in files.items())


def readme(manifest: dict[str, Any], sizes: dict[str, int]) -> str:
    """The corpus README (provenance, rule, counts, hashes, license) from the manifest."""
    s = manifest["splits"]
    total = s["train"]["characters"] + s["validation"]["characters"]
    share = s["validation"]["characters"] / total
    enc = sum(chars for split in SPLITS for name, chars in s[split]["files"].items()
              if name.startswith("Lib/encodings/"))
    shard_rows = "\n".join(f"| `{name}` | {size} |" for name, size in sizes.items())
    return f"""<!-- generated by tools/make_source_corpus.py; do not edit by hand -->
# CPython source corpus

A frozen character-level corpus made of the Python source code of the
**CPython {PINNED_CPYTHON} standard library** (`Lib/`), without its tests, split by file
into a training and a validation text. It is the data of the "one Chinchilla" GPT
runs of `stam-bench` and is loaded, offline, by
`stam_optimizer.benchmarks.tasks.source_corpus.load_source_corpus(split)`, which
checks the sha256 of the decompressed text.

| split | files | characters | sha256 of the decompressed text |
|---|---:|---:|---|
| train | {len(s["train"]["files"])} | {s["train"]["characters"]} | `{s["train"]["sha256"]}` |
| validation | {len(s["validation"]["files"])} | {s["validation"]["characters"]} | \
`{s["validation"]["sha256"]}` |

Validation holds {share:.1%} of the characters. The vocabulary shared by both splits
has {len(manifest["vocabulary"])} characters (newline and printable ASCII).
{manifest["non_ascii_replaced"]} non-ASCII characters were replaced (see below).

| file | bytes (xz) |
|---|---:|
{shard_rows}

## Selection rule

- Source: the `Lib/` folder of CPython {PINNED_CPYTHON} (read from an installed
  CPython {PINNED_CPYTHON}; `python tools/make_source_corpus.py --lib-dir DIR`).
- Files: every `*.py` file, in sorted order of its relative path, except files
  under a folder named `test`, `tests` or `idle_test` (the test suites), the
  installed-only `site-packages/`, `lib-dynload/`, `config-*/`, `__pycache__/` and
  the build-generated `_sysconfigdata_*.py`.
- Split: a file is a **validation** file when `sha256("Lib/<path>")` (UTF-8),
  read as a big-endian integer, is divisible by {VALIDATION_MODULUS}; every other file
  is a training file. The split is by whole file: validation is never a tail of
  the training files. `{MANIFEST_NAME}` lists the files of each split.
- Text: each file is decoded as UTF-8, `\\r\\n` and `\\r` become `\\n`, tabs are expanded
  to 8 columns, and the file ends with a newline. Characters outside printable
  ASCII and newline are replaced: typographic quotes and dashes, `...`, `ss`, `+-`
  and `u` by ASCII spellings, other characters by the ASCII part of their NFKD
  decomposition (accents dropped), `?` when nothing is left.
- Layout: each file is preceded by a header line `# file: Lib/<path>`, and files are
  joined with one empty line. The path of each file is therefore part of the text.
- Compression: xz (preset 9, extreme); a split is cut into shards at file
  boundaries only when one xz file would exceed 3.5 MB.

Note: {enc / total:.1%} of the characters are `Lib/encodings/*.py`, most of them
charmap tables generated by `gencodec.py` (repetitive; some are validation files).

## License

The text is the source code of the CPython standard library and is distributed
under the **Python Software Foundation License Version 2**
(<https://docs.python.org/3/license.html>); the full license text is
`{LICENSE_REF}` (the `corpus/` folder), copied from a CPython {PINNED_CPYTHON}
installation. Copyright (c) 2001 Python Software Foundation; All Rights Reserved.
The files are modified only as described under "Text" above.

## Validation files

(characters of each file, its header line included)

{_file_list(s["validation"]["files"])}

(The training files, with their character counts, are listed in `{MANIFEST_NAME}`.)
"""


def write_corpus(lib_dir: Path, out_dir: Path,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                 preset: int = XZ_PRESET) -> dict[str, Any]:
    """Build the corpus from ``lib_dir`` and write it to ``out_dir``; return the manifest."""
    texts, manifest = build_corpus(lib_dir)
    sizes: dict[str, int] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.txt.xz"):
        old.unlink()
    for split in SPLITS:
        blobs = compress_split(split, texts[split], max_shard_bytes, preset)
        manifest["splits"][split]["shards"] = list(blobs)
        for name, blob in blobs.items():
            _write_atomic(out_dir / name, blob)
            sizes[name] = len(blob)
    _write_atomic(out_dir / MANIFEST_NAME,
                  (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
    _write_atomic(out_dir / README_NAME, readme(manifest, sizes).encode("utf-8"))
    manifest["xz_bytes"] = sizes
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: build, write and report the corpus."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib-dir", type=Path, default=Path(sysconfig.get_paths()["stdlib"]),
                        help=f"CPython {PINNED_CPYTHON} Lib/ folder (default: this "
                             f"interpreter's standard library)")
    parser.add_argument("--out-dir", type=Path, default=_DEFAULT_OUT)
    parser.add_argument("--max-shard-bytes", type=int, default=DEFAULT_MAX_SHARD_BYTES)
    parser.add_argument("--preset", type=int, default=XZ_PRESET,
                        help="xz preset (default 9 | extreme); lower is faster, same text")
    args = parser.parse_args(argv)
    if not (args.lib_dir / "os.py").is_file():
        parser.error(f"--lib-dir {args.lib_dir} does not look like a CPython Lib/ folder")
    if args.max_shard_bytes <= 0:
        parser.error("--max-shard-bytes must be positive")
    if (args.lib_dir.resolve() == Path(sysconfig.get_paths()["stdlib"]).resolve()
            and platform.python_version() != PINNED_CPYTHON):
        print(f"warning: reading Python {platform.python_version()}'s library, not the "
              f"pinned CPython {PINNED_CPYTHON}; the hashes will differ", file=sys.stderr)

    manifest = write_corpus(args.lib_dir, args.out_dir, args.max_shard_bytes, args.preset)
    print(f"wrote {args.out_dir}")
    for split in SPLITS:
        s = manifest["splits"][split]
        print(f"{split}: {len(s['files'])} files, {s['characters']} characters, "
              f"sha256 {s['sha256']}")
    print(f"vocabulary: {len(manifest['vocabulary'])} characters; "
          f"{manifest['non_ascii_replaced']} non-ASCII characters replaced")
    for name, size in manifest["xz_bytes"].items():
        print(f"{name}: {size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
