"""`tools/gpu_check.py`, the one-shot GPU check: its offline install step, and its whole run on a tiny config (CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
import torch

from tools import gpu_check
from tools.fetch_wheels import command


def make_wheel(folder, name: str = "fantasy_probe_pkg", version: str = "1.0"):
    """A minimal pure-Python wheel (what `pip download` would have put in .whl/)."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{k},,\n" for k in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in files.items():
            wheel.writestr(member, text)
    return path


def test_missing_packages_are_installed_from_the_wheel_folder_without_an_index(tmp_path, monkeypatch):
    wheels, site = tmp_path / "whl", tmp_path / "site"
    wheels.mkdir()
    make_wheel(wheels)
    make_wheel(wheels, "fantasy_unwanted_pkg")  # present, but nothing asks for it: not installed
    monkeypatch.setattr(sys, "path", list(sys.path))
    required = {"fantasy_probe_pkg": "fantasy_probe_pkg==1.0", "json": "json==0"}  # json is there already
    assert gpu_check.ensure_packages(wheels, site, required) == ["fantasy_probe_pkg"]
    import fantasy_probe_pkg

    assert fantasy_probe_pkg.VALUE == 42 and str(site) in fantasy_probe_pkg.__file__
    assert not (site / "fantasy_unwanted_pkg").exists()
    sys.modules.pop("fantasy_probe_pkg")
    assert gpu_check.ensure_packages(wheels, tmp_path / "unused", {"json": "json==0"}) == []  # nothing to do


def test_a_package_with_no_wheel_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: missing Python packages fantasy_absent_pkg and no wheels for them "
                                         r"in .*whl: run `python3 tools/fetch_wheels.py`"):
        gpu_check.ensure_packages(tmp_path / "whl", tmp_path / "site", {"fantasy_absent_pkg": "fantasy-absent-pkg==1"})


def test_the_wheel_list_covers_what_a_bare_cuda_machine_lacks_for_cpython_312_manylinux(tmp_path):
    """What the check imports beyond the CUDA image (torch, transformers, accelerate, peft, safetensors are there)."""
    assert {"diffusers", "gguf", "torchao", "ftfy", "soundfile", "soxr"} <= set(gpu_check.REQUIRED)
    assert gpu_check.REQUIRED["diffusers"] == "diffusers==0.42.1"
    cmd = command(["gguf==0.19.0"], tmp_path)
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and cmd[cmd.index("--implementation") + 1] == "cp"
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and "manylinux_2_28_x86_64" in cmd
    ignored = subprocess.run(["git", "check-ignore", str(gpu_check.WHEELS / "diffusers.whl")], cwd=gpu_check.ROOT, capture_output=True)
    assert ignored.returncode == 0  # .whl/ is git-ignored


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the tiny dry run is the CPU path")
def test_the_whole_check_runs_on_a_tiny_config_and_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "check"
    assert gpu_check.main(["--tiny", "--out", str(out)]) == 0
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["tiny"] and report["size"] == "64x64x9" and report["tokens"] == 48 and report["skipped"] == []
    from fantasy.weights.offload import VRAM_MODES
    from fantasy.weights.quantize import DIT_MODES

    assert [r["mode"] for r in report["dit_modes"]] == list(DIT_MODES)
    for row in report["dit_modes"]:
        assert row["error"] is None and row["step_s"] > 0 and row["pass_s"] == pytest.approx(row["step_s"] / 3)
        assert row["floor_fraction"] > 0
    assert [r["vram"] for r in report["vram_modes"]] == list(VRAM_MODES)
    assert all(r["error"] is None and r["seconds"] > 0 for r in report["vram_modes"])
    assert [r["file"] for r in report["host_ram"]] == ["q8_0", "bf16"]
    assert all(r["error"] is None and r["peak_rss_gb"] >= 0 and r["file_gb"] > 0 for r in report["host_ram"])
    assert [r["switches"] for r in report["switches"]] == ["plain", "batched guidance", "attention math"]
    assert all(r["error"] is None and r["step_s"] > 0 for r in report["switches"])
    pieces = report["switches"][0]["pieces"]  # the encoders and the VAE (and whatever fantasy.bench.gpu_speed adds), once
    assert {"text", "image", "audio", "vae_encode", "vae_decode"} <= {p["key"] for p in pieces}
    assert all(p["error"] is None and p["seconds"] > 0 for p in pieces) and report["switches"][1]["pieces"] == []
    markdown = (out / "gpu_check.md").read_text()
    assert markdown.startswith("GPU check (TINY config, 64x64x9, 48 tokens")
    for heading in ("**DiT storage (`--dit`), resident**", "**Peak VRAM per `--vram` mode**",
                    "**Host RAM while loading the DiT file onto the GPU**", "**Speed switches** (bf16 DiT)"):
        assert heading in markdown
    assert "| bf16-fp8-storage | " in markdown and "| group-offload | " in markdown
    assert markdown in capsys.readouterr().out


def test_a_section_that_does_not_fit_the_budget_is_recorded_as_skipped(tmp_path):
    report = gpu_check.run(True, tmp_path, budget_s=0.0, installed=[])
    assert report["skipped"] == ["dit_modes", "vram_modes", "host_ram_gguf", "switches", "host_ram_bf16"]
    assert json.loads((tmp_path / "gpu_check.json").read_text())["skipped"] == report["skipped"]
    assert "Skipped (time budget): dit_modes, vram_modes" in (tmp_path / "gpu_check.md").read_text()


def test_only_the_asked_sections_run(tmp_path):
    report = gpu_check.run(True, tmp_path, budget_s=0.0, installed=[], only=["switches", "host_ram_bf16"])
    assert report["skipped"] == ["switches", "host_ram_bf16"]  # asked for, then cut by the (zero) budget
    assert gpu_check.main(["--tiny", "--out", str(tmp_path / "b"), "--budget-s", "0", "--sections", "vram_modes"]) == 0
    assert json.loads((tmp_path / "b" / "gpu_check.json").read_text())["skipped"] == ["vram_modes"]
