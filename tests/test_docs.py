"""The README and docs/ stay true: short README, every doc reachable from it, every link, file and module they
name exists. Nothing here imports torch or the package: the checks read files (`ast` for module names)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

LINK = re.compile(r"\]\(([^)\s]+)\)|<img src=\"([^\"]+)\"")


def headings_slugs(text: str) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    slugs = set()
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return slugs


def prose(text: str) -> str:
    """The page without its fenced code blocks (a `# comment` in a shell block is not a heading)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def broken_links(page: Path) -> list[str]:
    text = page.read_text()
    broken = []
    for match in LINK.finditer(prose(text)):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in headings_slugs(file.read_text()):
            broken.append(f"{page.name}: {target} (no such heading)")
    return broken


def test_the_readme_is_short():
    assert len(README.read_text().splitlines()) <= 200


def test_every_doc_is_linked_from_the_readme():
    linked = {m.group(1) for m in LINK.finditer(README.read_text()) if m.group(1)}
    assert [d.name for d in DOCS if f"docs/{d.name}" not in linked] == []


def test_every_link_reaches_a_file_and_heading():
    assert [b for page in PAGES for b in broken_links(page)] == []


def test_the_link_check_sees_missing_files_and_headings(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A section: with `code`\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#a-section-with-code) [self](#page) [gone](missing.md) "
                    "[bad](other.md#nope) [web](https://example.com)\n\n```bash\n# not a heading\n```\n")
    assert broken_links(page) == ["page.md: missing.md (no such file)", "page.md: other.md#nope (no such heading)"]
    assert headings_slugs(page.read_text()) == {"page"}


def module_files() -> dict[str, Path]:
    modules = {}
    for path in sorted((ROOT / "fantasy").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def missing_names(text: str, modules: dict[str, Path]) -> list[str]:
    """Repository paths (`fantasy/...`, `tests/...`, `examples/...`, ...) that do not exist, and dotted names
    `fantasy.x.y[.attr]` whose module does not exist or does not define `attr`."""
    paths = re.findall(r"(?<![\w/.-])(?:fantasy|tests|examples|bench|tools|docs|\.ci)/[\w/.*-]*\w", text)
    missing = [p for p in paths if not (ROOT / p).exists() and not (ROOT / f"{p}.py").exists()
               and not ("*" in p and any(ROOT.glob(p)))]
    for dotted in re.findall(r"(?<![\w/.])fantasy(?:\.\w+)+", text):
        module = dotted
        while module and module not in modules:
            module = module.rpartition(".")[0]
        rest = dotted[len(module) + 1:].split(".")[0] if module and module != dotted else None
        if not module or (rest and rest not in top_level_names(modules[module])):
            missing.append(dotted)
    return missing


def test_the_docs_name_only_files_and_modules_that_exist():
    modules = module_files()
    assert {page.name: missing_names(page.read_text(), modules) for page in PAGES} == {p.name: [] for p in PAGES}


def test_the_name_check_sees_what_is_missing():
    modules = module_files()
    text = ("`fantasy/model/adapter.py`, `fantasy/model/nothing.py`, `fantasy.model.adapter`, "
            "`fantasy.model.adapter.no_such_name`, `fantasy.nothing`, tests/test_docs.py, bench/gone.py, a/fantasy/x.py, "
            "tests/test_faults_*.py, tests/test_nothing_*.py")
    assert missing_names(text, modules) == [
        "fantasy/model/nothing.py", "bench/gone.py", "tests/test_nothing_*.py", "fantasy.model.adapter.no_such_name",
        "fantasy.nothing",
    ]
