"""`TrainingSet`: the cached clips as a torch Dataset, with motion labels ranked over the whole set.

Opening it loads no encoder and decodes no video: only the cache files. Labels depend on every clip
of the set (see `fantasy.train.labels`), so they are computed here, not stored per clip.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from fantasy.errors import TrainingDataError
from fantasy.train.cache import DATASET_FILE, CachedClip, read_metadata
from fantasy.train.labels import motion_labels


class TrainingSet(Dataset):
    """Cached clips in a fixed order. Item i is a dict of tensors (the cache file's, see
    `fantasy.train.cache`) plus `motion_labels` [2] (expression, body) in [0, 1] and `name`.

    All clips must share one cache fingerprint (same encoders, spec and settings), else mixing them
    would train on inconsistent features: that is a `TrainingDataError`.
    """

    def __init__(
        self,
        clip_files: Sequence[str | Path],
        empty_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> None:
        self.files = [Path(p) for p in clip_files]
        if not self.files:
            raise TrainingDataError("The training set is empty: cache at least one clip first.")
        metas = [read_metadata(p) for p in self.files]
        found = {m["fingerprint"] for m in metas}
        if len(found) > 1:
            raise TrainingDataError(
                f"The cached clips were made with {len(found)} different settings or models; cache the data again "
                "so that every clip is encoded the same way."
            )
        self.fingerprint = found.pop()
        self.names = [m["name"] for m in metas]
        first = metas[0]
        self.fps, self.num_frames = float(first["fps"]), int(first["num_frames"])
        self.width, self.height = int(first["width"]), int(first["height"])
        scores = []
        for path in self.files:
            with safe_open(str(path), framework="pt") as f:
                scores.append(f.get_tensor("motion_scores").double())
        self.motion_scores = torch.stack(scores)
        self.motion_labels = torch.from_numpy(motion_labels(self.motion_scores.numpy())).float()
        self.empty_prompt_embeds = empty_prompt_embeds
        self.negative_prompt_embeds = negative_prompt_embeds

    @classmethod
    def from_cache_dir(cls, cache_dir: str | Path) -> TrainingSet:
        """The clips of the last `cache_dataset` run into `cache_dir`, with its empty/negative prompt embeds."""
        cache_dir = Path(cache_dir)
        index = cache_dir / DATASET_FILE
        if not index.is_file():
            raise TrainingDataError(f"No training cache in {cache_dir} (no {DATASET_FILE}): cache the data first.")
        meta = read_metadata(index)
        names = json.loads(meta["clips"])
        files = [cache_dir / f"{name}.safetensors" for name in names]
        missing = [p.name for p in files if not p.is_file()]
        if missing:
            raise TrainingDataError(f"The training cache in {cache_dir} lacks {missing}; cache the data again.")
        with safe_open(str(index), framework="pt") as f:
            empty, negative = f.get_tensor("empty_prompt_embeds"), f.get_tensor("negative_prompt_embeds")
        dataset = cls(files, empty, negative)
        if dataset.fingerprint != meta["fingerprint"]:
            raise TrainingDataError(
                f"The training cache in {cache_dir} is half updated (a caching run stopped early); cache the data again."
            )
        return dataset

    def __len__(self) -> int:
        return len(self.files)

    def clip(self, index: int) -> CachedClip:
        return CachedClip.load(self.files[index])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        clip = self.clip(index)
        return clip.tensors() | {"motion_labels": self.motion_labels[index], "name": clip.name}
