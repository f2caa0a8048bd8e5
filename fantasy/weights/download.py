"""`python -m fantasy download`: fetch exactly the files the real preset reads, with huggingface_hub.

For each repo part of `fantasy.weights.real.download_plan` it lists the repo's files with their sizes
(`HfApi.model_info(files_metadata=True)`), keeps those matching the part's allow-patterns, prints
what will be fetched, checks the free disk space, then calls `snapshot_download(allow_patterns=...,
local_dir=weights/<repo>)`: huggingface_hub shows progress bars, resumes interrupted files and skips
complete ones. The adapter's pickle is converted once to safetensors and then removed.

With `HF_HUB_OFFLINE=1` nothing is contacted: the command only reports what is present and raises
`WeightsMissing` for what is not.
"""

from __future__ import annotations

import fnmatch
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fantasy.errors import FantasyError, WeightsMissing
from fantasy.weights.adapter_weights import OFFICIAL_FILE, convert_checkpoint
from fantasy.weights.real import (
    ADAPTER_PART,
    ADAPTER_SAFETENSORS,
    DEFAULT_DIT,
    RepoPart,
    adapter_file,
    comfy_dit_mode,
    download_plan,
    fetch_command,
    hub_offline,
    locate,
    missing_error,
    weights_dir,
)

Printer = Callable[[str], None]


@dataclass
class PartPlan:
    """One repo part as it stands: the files to fetch (path in repo -> bytes) and where they go."""

    part: RepoPart
    target: Path
    patterns: list[str]
    files: dict[str, int] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)  # already complete under `target`
    skip_reason: str | None = None  # e.g. "already converted", "in the Hugging Face cache"

    @property
    def to_fetch(self) -> int:
        if self.skip_reason:
            return 0
        return sum(size for name, size in self.files.items() if name not in self.present)


def check_comfy(comfy: Path, dit: str) -> dict[str, Path]:
    """The files a ComfyUI folder supplies for `dit`, by role."""
    from fantasy.weights.comfy_folder import find_comfy_files
    from fantasy.weights.real import dit_file_key

    key = dit_file_key(dit)
    return find_comfy_files(comfy, want_gguf=None if key == "bf16" else key).found()


def human_size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1000 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.2f} {unit}"
        num_bytes /= 1000
    return f"{num_bytes:.2f} GB"


def _hub_error(repo: str, exc: Exception) -> FantasyError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(exc, GatedRepoError):
        return FantasyError(f"'{repo}' is gated on the Hugging Face Hub: accept its terms on the website, then log "
                            f"in with `hf auth login` and run the download again.")
    if isinstance(exc, RepositoryNotFoundError):
        return FantasyError(f"The Hugging Face repo '{repo}' was not found (or needs a login): {exc}")
    first_line = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return FantasyError(
        f"Could not reach the Hugging Face Hub for '{repo}' ({type(exc).__name__}: {first_line}). Check the "
        "connection (or HF_ENDPOINT) and run the command again: finished files are kept and partial ones resume."
    )


def list_part(api, part: RepoPart, root: Path) -> PartPlan:
    """Ask the Hub which files of `part` exist and how big they are; note those already on disk."""
    try:
        info = api.model_info(part.repo, files_metadata=True)
    except Exception as exc:
        raise _hub_error(part.repo, exc) from exc
    sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    patterns = []
    for pattern in part.patterns:
        if not fnmatch.filter(sizes, pattern):
            pattern = dict(part.fallbacks).get(pattern, pattern)
        patterns.append(pattern)
    chosen = {name: size for name, size in sizes.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns)}
    for entry in part.required:
        if not any(fnmatch.filter(chosen, alternative) for alternative in entry.split("|")):
            raise FantasyError(
                f"The Hugging Face repo '{part.repo}' has no file matching '{entry}' any more; the real preset "
                "cannot be set up from it. Please report this."
            )
    target = root / part.folder
    present = {name for name, size in chosen.items()
               if (target / name).is_file() and (target / name).stat().st_size == size}
    return PartPlan(part, target, patterns, chosen, present)


def make_plan(dit: str, root: Path, api=None, comfy: Path | None = None) -> list[PartPlan]:
    from huggingface_hub import HfApi

    api = api or HfApi()
    plans = []
    for part in download_plan(dit, comfy):
        if part is ADAPTER_PART and (root / ADAPTER_SAFETENSORS).is_file():
            plan = PartPlan(part, root / part.folder, list(part.patterns), skip_reason=f"already converted: "
                            f"{root / ADAPTER_SAFETENSORS}")
            plans.append(plan)
            continue
        plan = list_part(api, part, root)
        found = locate(part, root)
        if found is not None and found != plan.target:
            plan.skip_reason = f"already in the Hugging Face cache: {found}"
        plans.append(plan)
    return plans


def print_plan(plans: list[PartPlan], root: Path, out: Printer) -> int:
    """Print every file with its size, then the total to fetch; return that total in bytes."""
    out(f"Weights for the real preset -> {root}")
    for plan in plans:
        total = sum(plan.files.values())
        out(f"  {plan.part.repo}  ({plan.part.purpose})  {human_size(total)}" if plan.files else
            f"  {plan.part.repo}  ({plan.part.purpose})")
        if plan.skip_reason:
            out(f"    skip: {plan.skip_reason}")
            continue
        for name, size in sorted(plan.files.items()):
            state = "  [have]" if name in plan.present else ""
            out(f"    {human_size(size):>10}  {name}{state}")
    needed = sum(plan.to_fetch for plan in plans)
    out(f"To download: {human_size(needed)}")
    return needed


def check_disk_space(root: Path, needed: int) -> None:
    free = shutil.disk_usage(root).free
    if needed > free:
        raise FantasyError(f"Not enough disk space in {root}: {human_size(needed)} to download, "
                           f"{human_size(free)} free. Free some space or pick another --dir.")


def fetch(plan: PartPlan) -> None:
    """Download one part into its folder (resumable, with huggingface_hub's progress bars)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(plan.part.repo, allow_patterns=plan.patterns, local_dir=str(plan.target))
    except Exception as exc:
        raise _hub_error(plan.part.repo, exc) from exc


def convert_adapter(ckpt: Path, root: Path, keep_ckpt: bool, out: Printer) -> Path:
    """Released `.ckpt` -> `fantasytalking_model.safetensors` (checked: 3 + 80 tensors).

    The pickle is then removed if we downloaded it into `root` (3.4 GB we never read again); a copy
    in the Hugging Face cache is left alone.
    """
    target = root / ADAPTER_SAFETENSORS
    count = convert_checkpoint(ckpt, target)
    out(f"converted {ckpt.name} -> {target} ({count} tensors)")
    if not keep_ckpt and ckpt.parent == root / ADAPTER_PART.folder:
        ckpt.unlink()
        out(f"removed {ckpt} (pass --keep-ckpt to keep it)")
    return target


def report_offline(dit: str, root: Path, out: Printer, comfy: Path | None = None) -> None:
    """HF_HUB_OFFLINE=1: contact nothing; say what is there, raise for what is not."""
    out(f"HF_HUB_OFFLINE=1: not contacting the Hub; checking {root}")
    missing = []
    for part in download_plan(dit, comfy):
        if part is ADAPTER_PART:
            try:
                out(f"  ok  adapter: {adapter_file(root, dit)}")
            except WeightsMissing as exc:
                missing.append(str(exc))
            continue
        folder = locate(part, root)
        if folder is None:
            entry = part.first_missing(root / part.folder) or part.required[0]
            missing.append(str(missing_error(part, entry, root, dit)))
        else:
            out(f"  ok  {part.repo}: {folder}")
    if missing:
        raise WeightsMissing(f"{len(missing)} of the real preset's parts are missing. " + " | ".join(missing))
    out("All weights are present; nothing to download.")


def fetch_face_weights(dry_run: bool, out: Printer) -> None:
    """face-alignment's landmark + detector files (the optional face backend; dlib's ship with the requirements)."""
    from fantasy.face.fan_backend import WEIGHT_URLS, checkpoints_dir, ensure_weights, required_weight_files

    names = required_weight_files()
    if dry_run:
        for name in names:
            out(f"  face-alignment: {WEIGHT_URLS[name]} -> {checkpoints_dir() / name}")
        return
    out(f"face-alignment weights ({', '.join(names)}) in {ensure_weights()}")


def download(
    dit: str | None = DEFAULT_DIT, root: str | Path | None = None, dry_run: bool = False, keep_ckpt: bool = False,
    out: Printer = print, api=None, face: bool = False, comfy: Path | None = None,
) -> list[PartPlan]:
    """Fetch what the real preset needs for `dit` into `root`; print sizes first. Returns the plan.

    `face`: also the optional face-alignment backend's files (torch hub cache, not `root`).
    `comfy`: a ComfyUI models folder; what it holds is not fetched (`dit` None: the DiT it holds, if any).
    """
    root = weights_dir(root)
    if comfy is not None:
        dit = dit or comfy_dit_mode(comfy) or DEFAULT_DIT
        held = ", ".join(f"{role.replace('_', ' ')} {path.name}" for role, path in
                         check_comfy(comfy, dit).items()) or "nothing the real preset reads"
        out(f"From the ComfyUI folder {comfy}: {held} (not downloaded)")
    dit = dit or DEFAULT_DIT
    if hub_offline():
        report_offline(dit, root, out, comfy)
        if face:
            fetch_face_weights(dry_run, out)  # offline: only checks, raises `WeightsMissing` if absent
        return []
    root.mkdir(parents=True, exist_ok=True)
    plans = make_plan(dit, root, api, comfy)
    needed = print_plan(plans, root, out)
    if dry_run:
        if face:
            fetch_face_weights(dry_run, out)
        out("Dry run: nothing downloaded.")
        return plans
    adapter = next(p for p in plans if p.part is ADAPTER_PART)
    check_disk_space(root, needed + adapter.to_fetch // 2)  # + the bf16 safetensors made from the fp32 pickle
    for plan in plans:
        if plan.skip_reason is None and plan.files.keys() - plan.present:
            out(f"Fetching {plan.part.repo} ({human_size(plan.to_fetch)}) ...")
            fetch(plan)
    if not (root / ADAPTER_SAFETENSORS).is_file():
        source = adapter.target if adapter.skip_reason is None else locate(ADAPTER_PART, root)
        convert_adapter(Path(source) / OFFICIAL_FILE, root, keep_ckpt, out)
    if face:
        fetch_face_weights(dry_run, out)
    where = f" --comfy-models {comfy}" if comfy is not None else ""
    out(f"Done. Generate with: python -m fantasy generate --preset real --dit {dit} --weights {root}{where} ...")
    out(f"(Fully offline from now on: HF_HUB_OFFLINE=1 works; re-run `{fetch_command(dit, root)}` to repair.)")
    return plans
