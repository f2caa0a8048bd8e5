"""The Space preloads exactly the files the loader reads: README's front matter against the required-file list."""

from __future__ import annotations

from pathlib import Path

import yaml

from fantasy.weights.real import DIT_FILES, WAN_PART, download_plan

README = Path(__file__).resolve().parent.parent / "README.md"


def front_matter() -> dict:
    text = README.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def preloads() -> dict[str, set[str]]:
    """`preload_from_hub` entries ("repo file1,file2,..."), as repo -> files; a bare repo would mean everything."""
    entries = {}
    for entry in front_matter()["preload_from_hub"]:
        repo, _, files = entry.partition(" ")
        assert files, f"{repo} is preloaded whole: list the files the loader reads"
        assert repo not in entries, f"{repo} is listed twice"
        entries[repo] = set(files.split(" ")[0].split(","))
    return entries


def test_the_preload_list_is_the_loaders_file_list_in_both_directions():
    """The Space runs `--dit` auto with only the GGUF on disk (Q8_0): every file it reads is preloaded, and
    nothing is preloaded that it does not read (no DiT weights from the diffusers repo, no spiece.model)."""
    expected = {part.repo: set(part.hub_files()) for part in download_plan("q8_0")}
    assert preloads() == expected
    assert set(front_matter()["models"]) == set(expected)


def test_the_list_names_the_sharded_text_encoder_and_no_transformer_weights():
    wan = preloads()[WAN_PART.repo]
    shards = sorted(f for f in wan if f.startswith("text_encoder/model-"))
    assert shards == [f"text_encoder/model-{i:05d}-of-00005.safetensors" for i in range(1, 6)]
    assert {"tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "text_encoder/model.safetensors.index.json",
            "image_processor/preprocessor_config.json", "transformer/config.json"} <= wan
    assert not any(f.startswith("transformer/") and f != "transformer/config.json" for f in wan)
    assert "tokenizer/spiece.model" not in wan and "model_index.json" not in wan
    assert DIT_FILES["bf16"].repo not in preloads()  # the bf16 file (33 GB) is not what the Space runs
