"""Download the wheels `tools/gpu_check.py` installs on a bare CUDA machine (CPython 3.12, manylinux x86-64).

    python3 tools/fetch_wheels.py            # -> .whl/ (git-ignored), then carry .whl/ to the GPU machine

One pinned wheel per package of `tools.gpu_check.REQUIRED`, each without its dependencies (they are
listed there too): pip matches manylinux tags exactly, so every tag the wheels use is offered.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.gpu_check import REQUIRED, WHEELS  # noqa: E402  (stdlib-only at import)

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64"]


def command(requirements: list[str], dest: Path) -> list[str]:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
            "--implementation", "cp", *platforms, "--disable-pip-version-check", "-d", str(dest), *requirements]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 tools/fetch_wheels.py", description=__doc__.splitlines()[0])
    parser.add_argument("dest", nargs="?", type=Path, default=WHEELS, help="where the wheels go (default: .whl/)")
    dest = parser.parse_args(argv).dest
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(command(sorted(set(REQUIRED.values())), dest), check=True)
    wheels = sorted(dest.glob("*.whl"))
    print(f"{len(wheels)} wheels in {dest} ({sum(w.stat().st_size for w in wheels) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
