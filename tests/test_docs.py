"""The raw results the docs stand on: every file under experiments/results/ is cited by a doc
(a table's or a finding's source), so that the folder holds evidence, not leftovers."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md",
        ROOT / "experiments" / "README.md", *sorted(RESULTS.glob("*.md"))]
BRACES = re.compile(r"([\w\-.]*)\{([^{}]*,[^{}]*)\}([\w\-.]*)")


def expand_braces(text: str) -> str:
    """``name-{a,b}.txt`` as ``name-a.txt name-b.txt`` (how the docs cite runs of a kind)."""
    while True:
        match = BRACES.search(text)
        if match is None:
            return text
        names = " ".join(match[1] + alt + match[3] for alt in match[2].split(","))
        text = text[:match.start()] + names + text[match.end():]


def cited(name: str, text: str) -> bool:
    """A file is cited by its name, its name without extension, or (the docs shorten runs of
    one kind in a row to ``-HHMMSS.jsonl``) its run's time."""
    stem = name.split(".")[0]
    times = re.findall(r"\d{8}-(\d{6})", name)
    return name in text or stem in text or any(f"-{t}" in text for t in times)


def test_every_result_file_is_cited_by_a_doc():
    text = expand_braces("\n".join(path.read_text() for path in DOCS))
    uncited = [p.name for p in sorted(RESULTS.iterdir()) if not cited(p.name, text)]
    assert not uncited, f"experiments/results/ files no doc cites: {uncited}"


def test_the_check_expands_the_docs_shorthand():
    text = expand_braces("`ncu-H200-x-b16-{fp32-plain,fp16-blocked}.txt`, `-144815.jsonl`")
    assert cited("ncu-H200-x-b16-fp16-blocked.txt", text)
    assert cited("half-knobs-H200-20261203-144815.jsonl", text)
    assert not cited("half-knobs-H200-20261203-144816.jsonl", text)
