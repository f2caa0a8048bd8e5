"""The example portrait and speech clip (the app's examples, `fantasy bench --cpu`), wherever the package runs.

In a checkout they are the repository's `examples/`; an installed wheel carries them as package data in
`fantasy/_examples/` (pyproject.toml maps that folder onto `examples/`), so both work from any folder.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
FOLDERS = (_HERE / "_examples", _HERE.parent / "examples")  # installed first: site-packages/examples is not ours


def example_file(name: str) -> Path:
    """The path of an example file ('portrait.png', 'speech.wav')."""
    for folder in FOLDERS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"example file {name} is missing from {' and '.join(map(str, FOLDERS))}")
