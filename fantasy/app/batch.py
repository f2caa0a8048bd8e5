"""Many videos with one model load: a jobs file (CSV or JSON Lines), one row per video.

A row names its portrait and speech (paths relative to the jobs file) and may set any generation setting; the
command's flags are the defaults for what a row leaves out. Every row is checked before any model loads
(settings, both inputs decoded, the output's folder and free space); a bad row is reported and skipped, the
others run. A row whose output already exists is skipped, so re-running a batch after a stop finishes it (the
mp4 writer only ever leaves complete, verified videos in place).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from fantasy.errors import FantasyError, InvalidSetting
from fantasy.settings import Settings

# column -> (Settings field or special name, parser); the names are the CLI flags' (underscores or dashes)
SETTING_COLUMNS: dict[str, tuple[str, type]] = {
    "prompt": ("prompt", str), "negative_prompt": ("negative_prompt", str), "seed": ("seed", int),
    "steps": ("steps", int), "text_guidance": ("text_guidance", float), "audio_guidance": ("audio_guidance", float),
    "audio_weight": ("audio_weight", float), "fps": ("fps", int), "max_frames": ("max_frames", int),
    "max_duration": ("max_duration", float), "size": ("longest_edge", int),
}
MOTION_COLUMNS = ("expression", "body")
COLUMNS = ("portrait", "speech", "out", *SETTING_COLUMNS, *MOTION_COLUMNS)
ALIASES = {"image": "portrait", "audio": "speech", "output": "out"}
SUFFIXES = (".csv", ".jsonl")


@dataclass
class Job:
    """One row: what to make, from what, with which settings; `problem` set when the row cannot run."""

    row: int  # 1-based, as an editor shows data rows (CSV: the header is not counted)
    portrait: Path | None = None
    speech: Path | None = None
    out: Path | None = None
    settings: Settings = field(default_factory=Settings)
    expression: float | None = None
    body: float | None = None
    problem: str | None = None


@dataclass
class Outcome:
    """What happened to one job."""

    job: Job
    status: str  # "done", "skipped" (output already there), "failed", "stopped", "not run" (batch stopped)
    detail: str = ""
    seconds: float = 0.0


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The jobs file's rows as column -> text (CSV with a header, or one JSON object per line); `InvalidSetting`
    for a file that cannot be read as either, with the line that fails."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise InvalidSetting(f"the jobs file must be .csv or .jsonl, got '{path.name}'")
    if not path.is_file():
        from fantasy.errors import InputFileNotFound

        raise InputFileNotFound(f"Jobs file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames:
            raise InvalidSetting(f"{path.name} is empty: the first line names the columns (portrait,speech,...)")
        rows = []
        for row in reader:
            if None in row:
                raise InvalidSetting(f"{path.name}: data row {len(rows) + 1} has more cells than the header has columns")
            rows.append({key: value or "" for key, value in row.items()})
        return rows
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidSetting(f"{path.name} line {number} is not JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(record, dict):
            raise InvalidSetting(f"{path.name} line {number} is not a JSON object ({{\"portrait\": ..., \"speech\": ...}})")
        rows.append({key: "" if value is None else str(value) for key, value in record.items()})
    return rows


def _columns(rows: list[dict[str, str]], name: str) -> dict[str, str]:
    """Each row's column name -> our column; unknown names are refused for the whole file (a misspelt setting
    would otherwise be silently ignored on every row)."""
    import difflib

    mapping = {}
    for column in dict.fromkeys(key for row in rows for key in row):
        key = column.strip().lower().replace("-", "_").replace(" ", "_")
        key = ALIASES.get(key, key)
        if key not in COLUMNS:
            close = difflib.get_close_matches(key, COLUMNS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(COLUMNS)})"
            raise InvalidSetting(f"{name}: unknown column '{column}'{hint}")
        mapping[column] = key
    if "portrait" not in mapping.values() or "speech" not in mapping.values():
        raise InvalidSetting(f"{name}: every row needs a 'portrait' and a 'speech' column")
    return mapping


def plan_jobs(rows: list[dict[str, str]], jobs_file: Path, out_dir: Path, defaults: Settings,
              motion_defaults: tuple[float | None, float | None] = (None, None)) -> list[Job]:
    """Rows -> jobs: paths resolved against the jobs file's folder, settings over `defaults`, output names.

    Problems found here (a value that is not a number, a missing cell, two rows writing one file) go into the
    job's `problem`; the other rows are unaffected.
    """
    base = jobs_file.parent
    mapping = _columns(rows, jobs_file.name)
    jobs, outputs = [], {}
    for number, raw in enumerate(rows, 1):
        row = {mapping[key]: value.strip() for key, value in raw.items()}
        job = Job(number, settings=replace(defaults), expression=motion_defaults[0], body=motion_defaults[1])
        try:
            _fill(job, row, base, out_dir)
        except InvalidSetting as problem:
            job.problem = str(problem)
        if job.out is not None and job.problem is None:
            earlier = outputs.setdefault(job.out.resolve(), number)
            if earlier != number:
                job.problem = f"writes {job.out.name}, as row {earlier} does (give each row its own 'out')"
        jobs.append(job)
    return jobs


def _fill(job: Job, row: dict[str, str], base: Path, out_dir: Path) -> None:
    for column in ("portrait", "speech"):
        if not row.get(column):
            raise InvalidSetting(f"the '{column}' cell is empty")
        path = Path(row[column]).expanduser()
        setattr(job, column, path if path.is_absolute() else base / path)
    changes = {}
    for column, (name, kind) in SETTING_COLUMNS.items():
        if row.get(column):
            changes[name] = _value(column, row[column], kind)
    job.settings = replace(job.settings, **changes)
    for column in MOTION_COLUMNS:
        if row.get(column):
            setattr(job, column, _value(column, row[column], float))
    out = row.get("out") or f"{job.row:03d}-{job.portrait.stem}-{job.speech.stem}.mp4"
    path = Path(out).expanduser()
    job.out = path if path.is_absolute() else out_dir / path


def _value(column: str, text: str, kind: type):
    if kind is str:
        return text
    try:
        number = float(text)
    except ValueError:
        raise InvalidSetting(f"{column} must be a number, got '{text}'") from None
    if kind is int:
        if number != int(number):
            raise InvalidSetting(f"{column} must be a whole number, got '{text}'")
        return int(number)
    return number


def check_job(job: Job, preset) -> None:
    """Everything about one job that needs no model: its settings, both inputs (decoded, then dropped), the
    motion sliders' range and the output folder's room. `job.problem` says why it cannot run."""
    from fantasy.generation import prepare_inputs
    from fantasy.media.output import check_target
    from fantasy.model.motion import check_unit

    if job.problem is not None:
        return
    try:
        settings = job.settings.resolved(preset)
        for name, value in (("expression intensity", job.expression), ("body-motion intensity", job.body)):
            if value is not None:
                check_unit(name, value)
        inputs = prepare_inputs(job.portrait, job.speech, settings)
        check_target(job.out, 2 * inputs.output_bytes(settings.fps))
    except FantasyError as problem:
        job.problem = str(problem)


ProgressLine = Callable[[str], None]


def run_jobs(pipe, jobs: list[Job], preset, say: ProgressLine, overwrite: bool = False) -> list[Outcome]:
    """Run every runnable job with the one loaded pipeline, in order; never stops for one job's failure.

    `say` gets the batch's progress lines: one per job as it starts and ends (with the time left, estimated
    from the jobs done so far), and each stage's progress inside a job. A stop request (Ctrl-C, SIGTERM)
    ends the batch after reporting what was done (`StopRequested` is re-raised with the outcomes attached).
    """
    from fantasy.stop import StopRequested

    todo = [job for job in jobs if job.problem is None and (overwrite or not job.out.exists())]
    outcomes: dict[int, Outcome] = {}
    for job in jobs:
        if job.problem is not None:
            outcomes[job.row] = Outcome(job, "failed", job.problem)
        elif job not in todo:
            outcomes[job.row] = Outcome(job, "skipped", "output already there")
    spent: list[float] = []
    for index, job in enumerate(todo, 1):
        left = f", about {_duration(sum(spent) / len(spent) * (len(todo) - index + 1))} left" if spent else ""
        say(f"[{index}/{len(todo)}] row {job.row}: {job.portrait.name} + {job.speech.name} -> {job.out.name}{left}")
        started = time.perf_counter()
        try:
            result = _run_one(pipe, job, preset, say)
        except StopRequested as stop:
            outcomes[job.row] = Outcome(job, "stopped", str(stop), time.perf_counter() - started)
            for later in todo[index:]:
                outcomes[later.row] = Outcome(later, "not run", "the batch was stopped")
            stop.outcomes = [outcomes[j.row] for j in jobs]
            raise
        except FantasyError as problem:
            outcome = Outcome(job, "failed", str(problem), time.perf_counter() - started)
        except Exception as bug:  # noqa: BLE001 - one job's crash must not lose the rest of the batch
            _free_gpu_memory()
            outcome = Outcome(job, "failed", f"{type(bug).__name__}: {str(bug).splitlines()[0][:200] if str(bug) else ''}",
                              time.perf_counter() - started)
        else:
            outcome = Outcome(job, "done", f"{result.num_frames} frames, {result.num_frames / result.fps:.1f} s",
                              time.perf_counter() - started)
            spent.append(outcome.seconds)
        outcomes[job.row] = outcome
        say(f"[{index}/{len(todo)}] row {job.row}: {outcome.status} ({outcome.detail}) in {outcome.seconds:.1f} s")
    return [outcomes[job.row] for job in jobs]


def _run_one(pipe, job: Job, preset, say: ProgressLine):
    from fantasy.app.sliders import motion_controls
    from fantasy.generation import generate

    settings = job.settings
    if job.expression is not None or job.body is not None:
        expression = 0.5 if job.expression is None else job.expression
        body = 0.5 if job.body is None else job.body
        settings, _ = motion_controls(expression, body, settings, trained=pipe.motion_context is not None)
    last = {"stage": None}

    def progress(event) -> None:  # a `fantasy.progress.Progress`: one line as each stage starts and ends
        if event.stage != last["stage"] or event.fraction >= 1.0:
            say(f"    {event.stage}: {event.fraction:.0%}")
            last["stage"] = event.stage

    return generate(pipe, job.portrait, job.speech, job.out, settings, preset, progress=progress)


def _free_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def summary_table(outcomes: list[Outcome], seconds: float) -> str:
    """A plain-text table, one line per row (status last: a failure's reason can be long), then the totals."""
    header = ("row", "portrait", "speech", "output", "time", "status")
    lines = [header]
    for outcome in outcomes:
        job = outcome.job
        name = lambda path: "-" if path is None else path.name  # noqa: E731
        status = outcome.status if outcome.status in ("done", "skipped") else f"{outcome.status}: {outcome.detail}"
        took = f"{outcome.seconds:.1f} s" if outcome.seconds else "-"
        lines.append((str(job.row), name(job.portrait), name(job.speech), name(job.out), took, status))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    text = ["  ".join([*(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)), line[-1]])
            for line in lines]
    counts = {status: sum(o.status == status for o in outcomes) for status in ("done", "skipped", "failed")}
    failed = [str(o.job.row) for o in outcomes if o.status == "failed"]
    tail = (f"{counts['done']} done, {counts['skipped']} skipped (already there), {counts['failed']} failed"
            + (f" (rows {', '.join(failed)})" if failed else "") + f" in {_duration(seconds)}")
    stopped = sum(o.status in ("stopped", "not run") for o in outcomes)
    if stopped:
        tail += f"; {stopped} not finished (stopped): run the same command again to finish them"
    return "\n".join([*text, tail])
