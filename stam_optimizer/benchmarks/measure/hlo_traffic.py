"""Kernels and memory traffic of a compiled XLA program, read from its HLO text.

An optimizer update is memory-bound, so the bytes its compiled program moves
predict its time better than any count from the algorithm. This module walks the
entry computation of `compiled.as_text()` (and the body of every `while` loop,
counted once): every instruction that XLA runs as a kernel (a fusion, a copy, a
concatenate, ...) reads its operands and writes its result, and their sizes are
in the text. Glue that moves no data (parameters, constants, tuples,
`get-tuple-element`, bitcasts) is skipped, and so are the branches of a
`conditional`: the optimizers' only conditional is the rarely taken
NaN-recovery path.

The count is an upper bound on a kernel's traffic (a fusion may read only a
slice of an operand) and ignores caches, so it is a floor model, not a
timing: `ratio to adamw ≥ traffic / adamw's traffic` when both run at the same
bandwidth.
"""

from __future__ import annotations

import re
from collections import Counter

ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
            "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
            "c128": 16}
# Instructions that are not kernels: they name or regroup buffers, or (for
# `conditional`) stand for branches that are not walked.
NOT_KERNELS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast",
               "opt-barrier", "conditional", "after-all", "partition-id", "replica-id"}
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_HEAD = re.compile(r"^\s*(?:ROOT\s+)?%(\S+) = ")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%(\S+) .*\{\s*$")


def type_bytes(text: str) -> int:
    """Bytes of an HLO type such as `f32[3,4]{1,0}` or a tuple of them."""
    total = 0
    for dtype, dims in _ARRAY.findall(text):
        size = ITEMSIZE.get(dtype)
        if size is None:
            continue
        for d in filter(None, dims.split(",")):
            size *= int(d)
        total += size
    return total


def _split_type(rest: str) -> tuple[str, str]:
    """Splits `TYPE op(args), attrs` into the type and what follows it."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[:i + 1], rest[i + 1:].lstrip()
    head, _, tail = rest.partition(" ")
    return head, tail


def _operands(call: str) -> tuple[str, list[str], str]:
    """`op(%a, %b), attrs` -> (op, [a, b], attrs)."""
    op, _, rest = call.partition("(")
    depth, end = 1, len(rest)
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            end = i
            break
    return op.strip(), re.findall(r"%([\w.\-]+)", rest[:end]), rest[end + 1:]


def computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    """HLO module text -> ({computation name: instruction lines}, entry name)."""
    comps: dict[str, list[str]] = {}
    entry, current = "", None
    for line in hlo.splitlines():
        m = _COMPUTATION.match(line)
        if m and not line.startswith(" "):
            current = m.group(1)
            comps[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif line.strip() == "}":
            current = None
        elif current is not None and _HEAD.match(line):
            comps[current].append(line)
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return comps, entry


def kernel_list(hlo: str) -> list[dict]:
    """Every kernel of `hlo` in program order: its instruction name, op (fusions
    by kind) and the bytes it reads and writes."""
    comps, entry = computations(hlo)
    found: list[dict] = []

    def walk(name: str) -> None:
        sizes: dict[str, int] = {}
        for line in comps[name]:
            head = _HEAD.match(line)
            rest = line[head.end():]
            typ, call = _split_type(rest)
            out = type_bytes(typ)
            sizes[head.group(1)] = out
            op, args, attrs = _operands(call)
            if op == "while":
                body = re.search(r"body=%([\w.\-]+)", attrs)
                if body:
                    walk(body.group(1))
                continue
            if op in NOT_KERNELS:
                continue
            kind = re.search(r"kind=(\w+)", attrs)
            found.append({"name": head.group(1),
                          "op": f"fusion:{kind.group(1)}" if op == "fusion" and kind else op,
                          "bytes": out + sum(sizes.get(a, 0) for a in args)})

    walk(entry)
    return found


def traffic(hlo: str) -> dict:
    """Kernels (by op, fusions by kind) and bytes read + written by `hlo`'s kernels."""
    found = kernel_list(hlo)
    return {"kernels": len(found), "by_op": dict(Counter(k["op"] for k in found)),
            "bytes": int(sum(k["bytes"] for k in found))}
