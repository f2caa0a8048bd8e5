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


def shell_commands(text: str) -> list[str]:
    """The command lines of a page's ```bash blocks (comments dropped, `\\` continuations joined)."""
    commands, block, joined = [], None, ""
    for line in text.splitlines():
        if line.startswith("```"):
            block = line[3:].strip() if block is None else None
            continue
        if block not in ("bash", "sh", "shell"):
            continue
        line = re.split(r"\s+#", line)[0].rstrip()
        joined += line.removesuffix("\\")
        if line.endswith("\\"):
            continue
        if joined.strip() and not joined.lstrip().startswith("#"):
            commands.append(joined.strip())
        joined = ""
    return commands


def test_the_command_parse_joins_lines_and_drops_comments():
    text = ("```bash\n# a comment\npython -m fantasy generate --image a.png \\\n  --audio b.wav   # why\n```\n"
            "```text\npython -m fantasy nothing\n```\n```bash\npython app.py\n```\n")
    assert shell_commands(text) == ["python -m fantasy generate --image a.png   --audio b.wav", "python app.py"]


class Parsed(Exception):
    """Raised in place of running a command, once argparse has accepted its arguments."""


def command_problems(command: str, monkeypatch) -> str | None:
    """Parse one documented command with the parser of the program it runs, running nothing. None if it parses,
    else what is wrong with it."""
    import argparse
    import contextlib
    import importlib
    import io
    import shlex
    import subprocess

    words = [w for w in shlex.split(command) if not re.fullmatch(r"[A-Z_]+=\S*", w)]  # drop VAR=value prefixes
    if "..." in words:
        return None  # an elided example ("generate ... --release"): its options are parsed elsewhere
    if words[:2] == ["pip", "install"]:
        files = [words[i + 1] for i, w in enumerate(words) if w == "-r"]
        return "; ".join(f"no {f}" for f in files if not (ROOT / f).is_file()) or None
    if words[:3] in (["python", "-m", "pytest"], ["python3", "-m", "pytest"]):
        return None
    if "fantasy" in words and words[words.index("fantasy") - 1] == "-m":
        from fantasy.cli import build_parser
        from fantasy.cli import main as run
        build_parser()  # its imports, before processes are refused below (some libraries start one at import)
        args = words[words.index("fantasy") + 1:]
    elif "app.py" in words:
        from fantasy.app.ui import parse_args as run
        args = words[words.index("app.py") + 1:]
    elif words[0] in ("python", "python3") and words[1] == "-m" and words[2].startswith("tools."):
        run, args = importlib.import_module(words[2]).main, words[3:]
    elif words[0] in ("python", "python3") and words[1].startswith("tools/"):
        run, args = importlib.import_module(words[1].removesuffix(".py").replace("/", ".")).main, words[2:]
    else:
        return "no parser known for this program"

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        if self.prog.split()[-1] in ("-h", "--help"):
            return original(self, args, namespace)
        raise Parsed(original(self, args, namespace))

    def no_process(*args, **kwargs):
        raise AssertionError(f"a documented command started a process while being parsed: {args[0]}")

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(subprocess, "run", no_process)
    monkeypatch.setattr(subprocess, "Popen", no_process)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            run(args)
    except Parsed:
        return None
    except SystemExit:
        return errors.getvalue().strip().splitlines()[-1] if errors.getvalue().strip() else "exited"
    finally:
        monkeypatch.undo()
    return "ran without parsing its arguments"


def test_every_documented_command_parses(monkeypatch):
    """Every command in a ```bash block of the README and docs/ is accepted by its program's own parser (nothing
    runs): a renamed option or sub-command breaks the docs here, not for a reader."""
    problems = {f"{page.name}: {command}": command_problems(command, monkeypatch)
                for page in PAGES for command in shell_commands(page.read_text())}
    assert {c: p for c, p in problems.items() if p} == {}
    assert len(problems) > 30  # the walk saw the docs' commands


def test_a_wrong_option_or_command_is_reported(monkeypatch):
    assert command_problems("python -m fantasy generate --image a.png --audio b.wav --out c.mp4 --no-such-option 1",
                            monkeypatch).endswith("unrecognized arguments: --no-such-option 1")
    assert "invalid choice: 'genrate'" in command_problems("python -m fantasy genrate --image a.png", monkeypatch)
    assert command_problems("python app.py --prest tiny", monkeypatch).endswith("unrecognized arguments: --prest tiny")
    assert command_problems("pip install -r requirements-nothing.txt", monkeypatch) == "no requirements-nothing.txt"
    assert command_problems("bash tools/x.sh", monkeypatch) == "no parser known for this program"
    assert command_problems("python -m fantasy download --dry-run", monkeypatch) is None
