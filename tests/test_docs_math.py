"""docs/math.md holds the math the code cites, and the code cites it."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MATH = ROOT / "docs" / "math.md"


def _anchors(text: str) -> set[str]:
    return set(re.findall(r'<a id="([\w-]+)"></a>', text))


def test_math_page_has_every_optimizer_and_common_rule():
    text = MATH.read_text()
    anchors = _anchors(text)
    assert {"stam", "stamlite", "adams", "common-rules", "non-finite-gradient-entries",
            "empty-leaves", "decoupled-weight-decay-and-the-learning-rate", "schedules",
            "bias-corrections", "int8-momentum-storage", "beta1-signal-variants",
            "factored-adamw"} <= anchors
    # the update rules, in the symbols the code uses
    for line in ("r      = g − μ", "σ²     = b2·σ² + (1−b2)·mean(r²)",
                 "τ      = tau_decay·τ + (1−tau_decay)·mean(|r|)",
                 "β₁     = clip(b1_base·(1 − α·s), b1_min, b1_base)",
                 "β₁     = b1_base   if σ² is not finite or σ² ≥ fallback_threshold·(τ² + 1e-8)",
                 "ν̂      = ν / (1 − b2^(t+1))", "u      = μ̂ / (√ν̂ + eps)",
                 "â, b̂   = a / (1−ρ^(t+1)),  b / (1−ρ^(t+1))",
                 "β₁     = cand   if t mod k == 0   else previous β₁",
                 "u      = μ̂ / (√max(b̂, 0) + eps)",
                 "v      = b2·m_prev² + (1−b2)·g²", "m      = b1·m_prev + (1−b1)·g",
                 "θ ← θ − lr·(u + λ·θ)", "μ̃ = S·sign(q)·(q/127)²",
                 "R      = b2·R + (1−b2)·(rowmean(g²) + factored_eps)",
                 "C      = b2·C + (1−b2)·(colmean(g²) + factored_eps)",
                 "ν      = R ⊗ C / mean(R)", "μ̂      = μ / (1 − b1^(t+1))"):
        assert line in text, line


def test_signal_variants_section_links_to_signal_md():
    text = MATH.read_text()
    start = text.index('<a id="beta1-signal-variants"></a>')
    body = text[start:text.index("\n## ", text.index("## β₁ signal variants") + 1)]
    assert "## β₁ signal variants" in body and "(signal.md)" in body


@pytest.mark.parametrize("path, section", [
    ("stam_optimizer/stam.py", "STAM"), ("stam_optimizer/stam_lite.py", "STAMLite"),
    ("stam_optimizer/adams.py", "AdamS"), ("stam_optimizer/factored_adam.py", "Factored AdamW"),
    ("tests/reference.py", None), ("README.md", None)])
def test_code_and_readme_cite_the_math_page_not_spec(path, section):
    text = (ROOT / path).read_text()
    assert "SPEC.md" not in text
    assert "docs/math.md" in text
    if section:
        assert f"Implements the {section} section of docs/math.md" in text
        assert f"## {section}\n" in MATH.read_text()


def _own_text_files():
    """The repository's Python and Markdown files (not generated results or virtualenvs)."""
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if path.suffix in (".py", ".md") and path.is_file() and not any(
                part.startswith(".") or part in ("results", "site") for part in rel.parts):
            yield rel, path.read_text(encoding="utf-8", errors="replace")


def test_nothing_cites_a_spec_file_that_the_repository_lacks():
    assert not (ROOT / "SPEC.md").exists()
    citing = [str(rel) for rel, text in _own_text_files()
              if "SPEC.md" in text and rel != Path("tests/test_docs_math.py")]
    assert citing == []


def test_every_cited_tool_exists():
    cited = {(str(rel), tool) for rel, text in _own_text_files()
             for tool in re.findall(r"\btools/[\w/]+\.py\b", text)}
    assert cited and all(tool for _, tool in cited)
    missing = sorted((where, tool) for where, tool in cited if not (ROOT / tool).exists())
    assert missing == []
