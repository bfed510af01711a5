"""The documentation a newcomer reads stays what it promises: the README fits a screenful and its
stage table is the stages' own declarations; every docs page and benchmark page is reachable;
module docstrings say what a module is for, briefly, without measurement diaries."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_is_short_and_its_stage_table_is_the_declarations():
    from cai_ray.config import load_job
    from cai_ray.stages import registry

    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert registry.markdown_table(load_job()) in readme  # regenerate it when a stage changes
    assert readme.startswith("```bash\nmake run") and "make test" in readme.splitlines()[2]


def test_every_docs_page_is_linked_from_the_index_and_the_readme():
    readme, index = (ROOT / "README.md").read_text(), (ROOT / "docs" / "index.md").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name != "index.md")
    assert pages
    for page in pages:
        assert f"({page})" in index and f"(docs/{page})" in readme, page
    for link in re.findall(r"\]\(([^)#]+)\)", index + "\n" + readme):
        base = ROOT / ("docs" if link in index and not link.startswith("docs/") else "")
        assert (base / link).exists() or (ROOT / link).exists(), link


def test_benchmark_results_are_few_and_each_is_listed():
    results = sorted(p.name for p in (ROOT / "benchmarks" / "results").iterdir())
    assert len(results) <= 30, results
    listed = (ROOT / "benchmarks" / "README.md").read_text()
    for name in results:
        stem = name.split(".")[0]
        assert stem in listed or stem.removesuffix("_report") in listed, name


def test_module_docstrings_are_short_and_point_only_inside_the_repository():
    long, outside = [], []
    for path in sorted((ROOT / "cai_ray").rglob("*.py")):
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text), clean=False) or ""
        if len(doc.splitlines()) > 15:
            long.append(f"{path.relative_to(ROOT)}: {len(doc.splitlines())} lines")
        if "STACK-NOTES" in text:
            outside.append(str(path.relative_to(ROOT)))
        for ref in re.findall(r"benchmarks/results/[\w.]+\.md", text):
            if not (ROOT / ref).exists():
                outside.append(f"{path.relative_to(ROOT)} -> {ref}")
    assert not long and not outside, long + outside
