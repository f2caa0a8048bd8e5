"""Mutation testing of the core modules with mutmut: does the suite fail when the product breaks?

    python -m tools.mutation                       # every core module, one after the other
    python -m tools.mutation windows sampling      # some of them
    python -m tools.mutation --survivors windows   # only what no test detected yet: survived, no tests, not checked
    python -m tools.mutation --changed             # only mutants without a result: functions changed since
    python -m tools.mutation --sample 40 video     # 40 of its unchecked mutants, drawn with a fixed seed (an estimate)
    python -m tools.mutation --scores              # only print the scores of the last runs

mutmut (configured in pyproject.toml, `[tool.mutmut]`) copies `fantasy/` and `tests/` into `mutants/`, plants
one small change at a time in a function (an operator, a constant, a dropped argument...) and runs the tests
that call that function; a mutant that no test notices "survived". Results are kept in `mutants/`: naming a
module tries all its mutants again; `--survivors` and `--changed` try only those without a detected result
(mutmut resets the results of a function whose code changed). This is a bench command, not CI: on the 2-core
CI machine all core modules take about 1 h 15 min with `--max-children 2` (see docs/test-quality.md).

mutmut runs from a virtual environment of its own (`.venv-mutmut`, made on first use, seeing the shared
packages): mutmut 3.8 needs libcst >= 1.9, and the shared environment must keep its own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-mutmut"
MUTMUT_VERSION = "3.8.1"
# The core modules (issue 20): name -> source file, the one list to update when files move (keep `only_mutate` in
# pyproject.toml the same). Their tests are `[tool.mutmut]`'s test selection.
MODULES = {
    "windows": "fantasy/model/windows.py",
    "sampling": "fantasy/model/sampling.py",
    "adapter": "fantasy/model/adapter.py",
    "long_video": "fantasy/long_video.py",
    "video": "fantasy/media/video.py",
    "validation": "fantasy/app/validation.py",
    "generate": "fantasy/generation.py",
    "settings": "fantasy/settings.py",  # Settings.resolved, out of generate.py since issue 19
    "wan_keys": "fantasy/weights/wan_keys.py",
    "adapter_weights": "fantasy/weights/adapter_weights.py",
    "output": "fantasy/media/output.py",
    # issue 25: the modules outside the first run where planted bugs went unnoticed, and their neighbours
    "release": "fantasy/release.py",
    "precision": "fantasy/model/precision.py",
    "frame_shards": "fantasy/model/frame_shards.py",
    "checkpoints": "fantasy/weights/checkpoints.py",
    "analyzer": "fantasy/face/analyzer.py",
    "audio": "fantasy/media/audio.py",
    "image": "fantasy/media/image.py",
}
# mutmut's exit codes -> status (mutmut/stats.py); killed and timeout both mean a test noticed.
DETECTED = {"killed", "timeout", "caught by type check"}
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def mutmut() -> Path:
    """The mutmut executable, installed into `.venv-mutmut` on first use."""
    exe = VENV / "bin" / "mutmut"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", f"mutmut=={MUTMUT_VERSION}"], check=True)
    return exe


def scores(module: str) -> Counter:
    """Status counts of one module's mutants from mutmut's record (`mutants/<file>.meta`)."""
    meta = ROOT / "mutants" / (MODULES[module] + ".meta")
    if not meta.exists():
        return Counter()
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return Counter(STATUS.get(code, "suspicious") for code in codes.values())


def _codes(module: str) -> dict[str, int | None]:
    meta = ROOT / "mutants" / (MODULES[module] + ".meta")
    return json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}


def survivors(module: str) -> list[str]:
    return sorted(name for name, code in _codes(module).items()
                  if STATUS.get(code, "suspicious") not in DETECTED | {"not checked"})


def undetected(module: str) -> list[str]:
    """Survivors and the mutants with no result (new, or of a function changed since its last run)."""
    return sorted(name for name, code in _codes(module).items() if STATUS.get(code, "suspicious") not in DETECTED)


def unchecked_sample(module: str, size: int) -> list[str]:
    """`size` of the module's mutants without a result, drawn with a fixed seed (the same draw every time)."""
    unchecked = sorted(name for name, code in _codes(module).items() if code is None)
    return sorted(random.Random(20).sample(unchecked, min(size, len(unchecked))))


def score_line(module: str) -> str:
    """Killed of the checked mutants (the score), and how many of all were checked (a partial run says so)."""
    counts = scores(module)
    total = sum(counts.values())
    checked = total - counts["not checked"]
    detected = sum(counts[s] for s in DETECTED)
    rest = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s not in DETECTED | {"not checked"})
    percent = f"{100 * detected / checked:.1f} %" if checked else "-"
    return f"| {MODULES[module]} | {detected}/{checked} | {percent} | {checked}/{total} | {rest or '-'} |"


def forget_stale_test_map() -> None:
    """mutmut maps functions to the tests that call them once, and only adds tests it has not seen: after the code
    or the tests change (a merge), a new function would have "no tests". Drop the map so it is measured again;
    the recorded verdicts stay (mutmut itself retries the mutants of changed functions)."""
    stats = ROOT / "mutants" / "mutmut-stats.json"
    if not stats.exists():
        return
    sources = [*(ROOT / "fantasy").rglob("*.py"), *(ROOT / "tests").glob("*.py"), ROOT / "pyproject.toml"]
    if max(p.stat().st_mtime for p in sources) > stats.stat().st_mtime:
        stats.unlink()


def run(modules: list[str], max_children: int, only_survivors: bool = False, changed: bool = False,
        sample: int = 0) -> int:
    exe = mutmut()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    forget_stale_test_map()
    if changed:  # no names: mutmut keeps every recorded result and tries the mutants that have none
        return subprocess.run([str(exe), "run", "--max-children", str(max_children)], cwd=ROOT, env=env).returncode
    for module in modules:
        if only_survivors or sample:
            names = undetected(module) if only_survivors else unchecked_sample(module, sample)
        else:
            names = [MODULES[module][:-3].replace("/", ".") + ".*"]
        print(f"== mutmut: {MODULES[module]} ({len(names) if only_survivors or sample else 'all'} mutants)", flush=True)
        if not names:
            continue
        code = subprocess.run([str(exe), "run", "--max-children", str(max_children), *names],
                              cwd=ROOT, env=env).returncode
        if code != 0:
            print(f"mutmut stopped with status {code} on {MODULES[module]}", file=sys.stderr)
            return code
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mutation", description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=f"some of: {', '.join(MODULES)} (default: all)")
    parser.add_argument("--max-children", type=int, default=1, help="mutants tested at once (default 1)")
    parser.add_argument("--survivors", action="store_true",
                        help="retry only the mutants no test detected yet (survived, no tests, not checked)")
    parser.add_argument("--changed", action="store_true",
                        help="try only the mutants with no result yet (new or changed functions, every module)")
    parser.add_argument("--sample", type=int, default=0, metavar="N",
                        help="try N of each module's unchecked mutants (fixed seed): a partial, estimated score")
    parser.add_argument("--scores", action="store_true", help="print the recorded scores, run nothing")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    modules = args.modules or list(MODULES)
    code = 0 if args.scores else run(modules, args.max_children, args.survivors, args.changed, args.sample)
    print("| module | killed/checked | score | checked/total | not detected |\n|---|---|---|---|---|")
    for module in modules:
        print(score_line(module))
    for module in modules:
        for name in survivors(module):
            print(f"survived: {name}")
    return code


if __name__ == "__main__":
    sys.exit(main())
