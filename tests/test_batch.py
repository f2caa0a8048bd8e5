"""`python -m fantasy batch`: a jobs file -> one video per row, one model load, bad rows skipped, a summary."""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from fantasy.app import batch
from fantasy.app.batch import plan_jobs, read_rows
from fantasy.cli import main
from fantasy.errors import InputFileNotFound, InvalidSetting
from fantasy.settings import Settings

from .conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH
from .mp4_probe import probe


def jobs_file(tmp_path, text, name="jobs.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- reading and planning (no models) -------------------------------------------------------------------------


def test_csv_and_jsonl_rows_become_jobs_with_paths_settings_and_output_names(tmp_path):
    csv_file = jobs_file(tmp_path, "Image,audio,Seed,text-guidance,size,Output,expression\n"
                                   "faces/a.png,a.wav,7,,256,,0.3\n/abs/b.png,b.wav,,2.5,,named.mp4,\n")
    defaults = Settings(seed=1, text_guidance=5.0, longest_edge=128)
    a, b = plan_jobs(read_rows(csv_file), csv_file, tmp_path / "out", defaults, (None, 0.9))
    assert (a.portrait, a.speech, a.out) == (tmp_path / "faces/a.png", tmp_path / "a.wav", tmp_path / "out/001-a-a.mp4")
    assert (a.settings.seed, a.settings.text_guidance, a.settings.longest_edge, a.expression, a.body) == (7, 5.0, 256, 0.3, 0.9)
    assert (b.portrait.as_posix(), b.out, b.settings.seed, b.settings.text_guidance) == (
        "/abs/b.png", tmp_path / "out/named.mp4", 1, 2.5)
    assert a.problem is None and b.problem is None
    jsonl = jobs_file(tmp_path, '{"portrait": "a.png", "speech": "a.wav", "prompt": "a man talking", "steps": 2}\n\n'
                                '{"portrait": "b.png", "speech": "b.wav", "seed": null}\n', "jobs.jsonl")
    first, second = plan_jobs(read_rows(jsonl), jsonl, tmp_path, Settings(), (None, None))
    assert (first.settings.prompt, first.settings.steps, second.row, second.settings.seed) == ("a man talking", 2, 2, 1111)


def test_a_bad_cell_or_a_shared_output_marks_only_its_row(tmp_path):
    path = jobs_file(tmp_path, "portrait,speech,seed,steps,out\na.png,a.wav,x,,o.mp4\nb.png,b.wav,,2.5,\n"
                               "c.png,,,,\nd.png,d.wav,,,o.mp4\ne.png,e.wav,3,4,o.mp4\n")
    jobs = plan_jobs(read_rows(path), path, tmp_path, Settings(), (None, None))
    assert [job.problem for job in jobs] == [
        "seed must be a number, got 'x'", "steps must be a whole number, got '2.5'", "the 'speech' cell is empty",
        None, "writes o.mp4, as row 4 does (give each row its own 'out')"]


@pytest.mark.parametrize("name, text, error, message", [
    ("jobs.txt", "x", InvalidSetting, "the jobs file must be .csv or .jsonl, got 'jobs.txt'"),
    ("jobs.csv", "", InvalidSetting, "jobs.csv is empty: the first line names the columns (portrait,speech,...)"),
    ("jobs.csv", "portrait,speech\na.png,a.wav,extra\n", InvalidSetting,
     "jobs.csv: data row 1 has more cells than the header has columns"),
    ("jobs.jsonl", '{"portrait": "a.png"}\n{portrait: b}\n', InvalidSetting,
     "jobs.jsonl line 2 is not JSON (Expecting property name enclosed in double quotes, column 2)"),
    ("jobs.jsonl", '["a.png", "a.wav"]\n', InvalidSetting,
     'jobs.jsonl line 1 is not a JSON object ({"portrait": ..., "speech": ...})'),
    ("jobs.csv", "portrait,speech,sede\na,b,1\n", InvalidSetting, "jobs.csv: unknown column 'sede' (did you mean 'seed'?)"),
    ("jobs.csv", "portrait,prompt\na,b\n", InvalidSetting, "jobs.csv: every row needs a 'portrait' and a 'speech' column"),
])
def test_a_jobs_file_that_cannot_be_read_is_refused_in_one_line(tmp_path, name, text, error, message):
    path = jobs_file(tmp_path, text, name)
    with pytest.raises(error) as raised:
        plan_jobs(read_rows(path), path, tmp_path, Settings(), (None, None))
    assert str(raised.value) == message
    with pytest.raises(InputFileNotFound, match=r"^Jobs file not found: .*/none.csv$"):
        read_rows(tmp_path / "none.csv")


# ---- the command ---------------------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    shutil.copy(EXAMPLE_IMAGE, tmp_path / "portrait.png")
    shutil.copy(EXAMPLE_SPEECH, tmp_path / "speech.wav")
    return tmp_path


def count_loads(monkeypatch):
    from fantasy.weights import presets

    loads = []
    real = presets.load_pipeline
    monkeypatch.setattr(presets, "load_pipeline", lambda *a, **k: loads.append(a) or real(*a, **k))
    return loads


@pytest.mark.slow
def test_one_load_makes_every_good_row_skips_bad_ones_and_a_rerun_skips_finished_outputs(folder, capsys, monkeypatch):
    path = jobs_file(folder, "portrait,speech,prompt,seed,size,fps,max_duration,out,expression,body\n"
                             "portrait.png,speech.wav,a woman talking,1,64,16,0.4,first.mp4,,\n"
                             "portrait.png,missing.wav,,2,64,,0.4,,,\n"
                             "portrait.png,speech.wav,,3,96,,0.4,,1.0,0.0\n"
                             "portrait.png,speech.wav,,4,64,,0.4,,1.5,\n")
    loads = count_loads(monkeypatch)
    assert main(["batch", str(path), "--steps", "1"]) == 1  # a row failed
    out, err = capsys.readouterr()
    assert len(loads) == 1
    first, third = probe(folder / "first.mp4"), probe(folder / "003-portrait-speech.mp4")
    assert (first.fps, first.width, first.frames) == (16.0, 64, 9)  # the row's fps and size: int(16*0.4//4)*4+5
    assert (third.fps, max(third.width, third.height), third.frames) == (23.0, 96, 13)
    assert not (folder / "002-portrait-missing.mp4").exists() and not (folder / "004-portrait-speech.mp4").exists()
    lines = err.splitlines()
    start = lines.index("checking 4 rows of jobs.csv ...")
    assert lines[start:start + 3] == [
        "checking 4 rows of jobs.csv ...", f"  row 2: Speech file not found: {folder / 'missing.wav'} (skipped)",
        "  row 4: expression intensity must be between 0 and 1, got 1.5 (skipped)"]
    assert "[1/2] row 1: portrait.png + speech.wav -> first.mp4" in err
    assert "[2/2] row 3: portrait.png + speech.wav -> 003-portrait-speech.mp4, about " in err
    table = out.splitlines()
    assert table[0].split() == ["row", "portrait", "speech", "output", "time", "status"]
    assert table[1].split()[:4] == ["1", "portrait.png", "speech.wav", "first.mp4"] and table[1].endswith("done")
    assert table[2].endswith(f"failed: Speech file not found: {folder / 'missing.wav'}")
    assert table[3].endswith("done") and table[4].endswith("failed: expression intensity must be between 0 and 1, got 1.5")
    assert table[5].startswith("2 done, 0 skipped (already there), 2 failed (rows 2, 4) in ")

    stamp = (folder / "first.mp4").stat().st_mtime_ns
    assert main(["batch", str(path), "--steps", "1"]) == 1
    out, err = capsys.readouterr()
    assert len(loads) == 1 and "[tiny]" not in err  # nothing to make: no model loaded
    assert (folder / "first.mp4").stat().st_mtime_ns == stamp
    assert out.splitlines()[1].endswith("skipped") and out.splitlines()[-1].startswith("0 done, 2 skipped")


@pytest.mark.slow
def test_a_row_that_fails_while_running_does_not_stop_the_others_and_a_stop_reports_the_rest(folder, capsys, monkeypatch):
    path = jobs_file(folder, '{"portrait": "portrait.png", "speech": "speech.wav", "out": "a.mp4"}\n'
                             '{"portrait": "portrait.png", "speech": "speech.wav", "out": "b.mp4"}\n'
                             '{"portrait": "portrait.png", "speech": "speech.wav", "out": "c.mp4"}\n', "jobs.jsonl")
    args = ["batch", str(path), "--steps", "1", "--size", "64", "--max-duration", "0.3"]
    real_run = batch._run_one

    def crash_on_b(pipe, job, preset, say):
        if job.out.name == "b.mp4":
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")
        return real_run(pipe, job, preset, say)

    monkeypatch.setattr(batch, "_run_one", crash_on_b)
    assert main(args) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in out[1:4:2]] == ["done", "done"]
    assert out[2].endswith("failed: RuntimeError: CUDA error: an illegal memory access was encountered")
    assert (folder / "a.mp4").exists() and not (folder / "b.mp4").exists() and (folder / "c.mp4").exists()

    from fantasy.stop import StopRequested

    def stop_on_b(pipe, job, preset, say):
        if job.out.name == "b.mp4":
            raise StopRequested(signal.SIGTERM)
        return real_run(pipe, job, preset, say)

    (folder / "a.mp4").unlink()
    (folder / "c.mp4").unlink()
    monkeypatch.setattr(batch, "_run_one", stop_on_b)
    assert main(args) == 128 + signal.SIGTERM
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[1].endswith("done") and "stopped:" in out[2] and out[3].endswith("not run: the batch was stopped")
    assert out[4].endswith("; 2 not finished (stopped): run the same command again to finish them")
    assert not (folder / "c.mp4").exists()


def test_a_batch_whose_rows_all_fail_loads_no_model(folder, capsys, monkeypatch):
    path = jobs_file(folder, json.dumps({"portrait": "none.png", "speech": "speech.wav"}) + "\n", "jobs.jsonl")
    loads = count_loads(monkeypatch)
    assert main(["batch", str(path)]) == 1
    out, err = capsys.readouterr()
    assert loads == [] and f"  row 1: Portrait file not found: {folder / 'none.png'} (skipped)" in err
    assert out.splitlines()[-1].startswith("0 done, 0 skipped (already there), 1 failed (rows 1) in ")
    assert main(["batch", str(path), "--steps", "0"]) == 2  # a bad default is the whole batch's error
    assert capsys.readouterr().err == "error: steps must be between 1 and 100, got 0\n"
