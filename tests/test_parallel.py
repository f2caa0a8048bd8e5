"""Context parallelism: one video over 2 and 3 CPU processes (gloo) equals one process, bit for bit.

The multi-process runs happen once per module (`tests/parallel_worker.py` under torchrun, 2 and 3 processes,
watched by `tests.process_watch`: a hang fails within minutes naming each rank's stage; the CLI under torchrun);
each test compares one of their results with a one-process reference computed here, on one thread as torchrun's
processes are (see `tests/parallel_cases.py`). The shard arithmetic is also tested alone, in this process, by
cutting one call into slices the way diffusers does. Faults (a lost rank, a lost launcher, an error on one rank
only) are in `tests/test_parallel_faults.py`; the layout rules in `tests/test_parallel_layout.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fantasy.cli import main as cli_main
from fantasy.errors import InvalidSetting
from fantasy.model.frame_shards import FrameSpan, shard_bounds
from fantasy.speed.layout import PARALLEL_BACKENDS, RING_BACKENDS, ContextParallel, check_context_parallel
from tests.conftest import EXAMPLE_IMAGE
from tests.parallel_cases import CASES, CASES3, BlockCounter, build, call, portrait_file, speech_file
from tests.parallel_worker import gguf_call, gguf_transformer, write_gguf
from tests.process_watch import run_watched

ROOT = Path(__file__).resolve().parent.parent
# A group run (a fixture of the first test that needs it) takes up to a few minutes on a busy 2-core machine;
# the watchdog (`tests.process_watch`) ends a hung one after 4 quiet minutes, before this.
pytestmark = pytest.mark.timeout(900)


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
TORCHRUN_ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", FANTASY_TEST_COLLECTIVE_TIMEOUT="120")


def run_torchrun(args: list[str], cwd: Path, timeout: int = 600, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([*TORCHRUN, *args], cwd=cwd, env=TORCHRUN_ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert (done.returncode == 0) == ok, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture
def one_thread():
    """The reference runs on one thread, like every torchrun process (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def worker_run(out: Path, processes: int) -> Path:
    """The worker on `processes` ranks into `out`, under the watchdog."""
    inputs = out / "inputs"
    inputs.mkdir()
    for seconds in (1.0, 1.5):
        speech_file(inputs, seconds)
    portrait_file(inputs)
    write_gguf(inputs)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "-m", "tests.parallel_worker", str(out)]
    run_watched(command, ROOT, TORCHRUN_ENV, out / "stages")
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    return worker_run(tmp_path_factory.mktemp("cp"), 2)


@pytest.fixture(scope="module")
def three_processes(tmp_path_factory) -> Path:
    return worker_run(tmp_path_factory.mktemp("cp3"), 3)


@pytest.fixture
def group_of(request):
    """The run of 2 or 3 processes a test asks for, started the first time one is needed (one per test's setup:
    each takes up to a few minutes on a busy 2-core machine)."""
    return lambda processes: request.getfixturevalue({2: "two_processes", 3: "three_processes"}[processes])


# ---- the shard arithmetic, in one process ------------------------------------------------------------------


def test_shard_bounds_are_diffusers_split_rule():
    for world in (2, 3, 4, 8):
        for total in range(world, 64):
            ids = torch.arange(total)
            uneven = [shard_bounds(total, r, world, uneven=True) for r in range(world)]
            assert [ids[s : s + n].tolist() for s, n in uneven] == [t.tolist() for t in ids.tensor_split(world)]
            if total % world == 0:  # the plain split: chunk, only on lengths that divide
                even = [shard_bounds(total, r, world, uneven=False) for r in range(world)]
                assert [ids[s : s + n].tolist() for s, n in even] == [t.tolist() for t in ids.chunk(world)]
    with pytest.raises(ValueError, match="35 tokens do not split evenly over 2 processes"):
        shard_bounds(35, 0, 2, uneven=False)


def test_frame_span_pads_a_slice_to_whole_frames_and_back():
    span = FrameSpan.covering(start=88, length=87, tokens_per_frame=35)  # rank 1 of 175 tokens
    assert span == FrameSpan(first=2, count=3, before=18, after=0)
    x = torch.randn(2, 87, 3, 4)
    padded = span.pad(x)
    assert padded.shape == (2, 105, 3, 4) and torch.equal(padded[:, :18], torch.zeros(2, 18, 3, 4))
    assert torch.equal(span.unpad(padded), x)
    assert FrameSpan.covering(0, 88, 35) == FrameSpan(0, 3, 0, 17)


@pytest.mark.parametrize("rank, world", [(-1, 2), (2, 2), (5, 3)])
def test_a_rank_outside_its_group_is_refused(rank, world):
    with pytest.raises(ValueError, match=f"^rank {rank} outside a group of {world}$"):
        shard_bounds(12, rank, world, uneven=True)
    assert shard_bounds(12, world - 1, world, uneven=False) == (12 - 12 // world, 12 // world)  # the last rank is in


def test_frame_span_edges_padding_on_both_sides_and_none():
    """A slice inside one frame pads both sides; a slice of whole frames, or the whole sequence, pads nothing."""
    inside = FrameSpan.covering(start=37, length=10, tokens_per_frame=35)  # tokens 37..46 of frame 1
    assert inside == FrameSpan(first=1, count=1, before=2, after=23) and inside.frames == slice(1, 2)
    x = torch.arange(1 * 10 * 2, dtype=torch.float32).view(1, 10, 2) + 1
    padded = inside.pad(x)
    assert padded.shape == (1, 35, 2) and torch.equal(padded[:, 2:12], x)
    assert not padded[:, :2].any() and not padded[:, 12:].any()
    assert torch.equal(inside.unpad(padded), x)
    exact = FrameSpan.covering(start=70, length=70, tokens_per_frame=35)
    assert exact == FrameSpan(2, 2, 0, 0) and exact.frames == slice(2, 4)
    assert exact.pad(x) is x and torch.equal(exact.unpad(x), x)
    assert FrameSpan.whole(21) == FrameSpan(0, 21, 0, 0) and FrameSpan.whole(21).frames == slice(0, 21)
    tail = FrameSpan.covering(start=0, length=36, tokens_per_frame=35)  # one token into frame 1
    assert tail == FrameSpan(0, 2, 0, 34) and tail.pad(torch.ones(1, 36)).shape == (1, 70)


class SliceOf:
    """A `token_shard` for one slice, as `fantasy.speed.parallel.TokenShard` gives it under a process group."""

    def __init__(self, total, rank, world):
        self.total, self.rank, self.world = total, rank, world

    def locate(self, local):
        start, length = shard_bounds(self.total, self.rank, self.world, uneven=True)
        assert length == local
        return start, self.total


@pytest.mark.parametrize("frames,tokens_per_frame,world", [(3, 16, 2), (5, 35, 2), (21, 9, 4), (4, 5, 3)])
def test_audio_attention_on_slices_equals_the_whole_call(tiny_pipe, frames, tokens_per_frame, world):
    """Each slice, padded to its frames, gets exactly its rows of the one-process result (padded keys, batch 3)."""
    processor = tiny_pipe.transformer.blocks[0].attn2.processor
    g = torch.Generator().manual_seed(frames)
    windows = torch.randn(1, frames, 6, 16, generator=g)
    lengths = torch.tensor([6, 3] * frames)[:frames]  # some windows padded: the key mask matters
    total = frames * tokens_per_frame
    query = torch.randn(3, total, 2, 12, generator=g)
    with torch.no_grad(), processor.audio.use(windows, lengths, torch.tensor([1.0, 0.0, 0.0])):
        whole = processor._audio_attention(query)
        parts = []
        try:
            for rank in range(world):
                start, length = shard_bounds(total, rank, world, uneven=True)
                processor.token_shard = SliceOf(total, rank, world)
                parts.append(processor._audio_attention(query[:, start : start + length]))
        finally:
            processor.token_shard = None
    assert torch.equal(torch.cat(parts, dim=1), whole)


# ---- what is refused, before any model loads -----------------------------------------------------------------


def test_backend_lists_are_diffusers_own():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry, _native_attention_forward_op

    assert set(_AttentionBackendRegistry._supports_context_parallel) == PARALLEL_BACKENDS
    not_ring = PARALLEL_BACKENDS - RING_BACKENDS
    assert not_ring == {"native", "_native_npu"}
    q = torch.zeros(1, 4, 2, 8)
    with pytest.raises(ValueError, match="Native attention does not support return_lse=True"):  # why not the ring
        _native_attention_forward_op(None, q, q, q, return_lse=True)


@pytest.mark.parametrize("options,kwargs,message", [
    (ContextParallel(1), {"world_size": 1}, "--context-parallel needs at least 2 processes, got 1"),
    (ContextParallel(2), {"world_size": 1}, r"--context-parallel 2 needs 2 processes, but 1 was launched: run it "
                                            r"under `torchrun --nproc_per_node 2 -m fantasy \.\.\.`"),
    (ContextParallel(4), {"world_size": 2}, "--context-parallel 4 needs 4 processes, but 2 were launched"),
    (ContextParallel(2, "ring"), {"world_size": 2}, "ring attention needs a backend that returns the log-sum-exp"),
    (ContextParallel(2, "tree"), {"world_size": 2}, "unknown context-parallel kind 'tree'; choose one of ulysses, ring"),
    (ContextParallel(2), {"world_size": 2, "attention": "_native_math"},
     "attention backend '_native_math' cannot run under context parallelism"),
    (ContextParallel(2), {"world_size": 2, "vram": "group-offload"},
     r"--vram group-offload cannot be combined with --context-parallel"),
])
def test_each_unsupported_combination_has_its_message(options, kwargs, message):
    with pytest.raises(InvalidSetting, match=message):
        check_context_parallel(options, **kwargs)
    check_context_parallel(ContextParallel(2, "ring"), attention="flash", world_size=2)  # allowed


def test_cli_without_torchrun_says_how_to_launch_and_loads_nothing(tmp_path, speech_wav, capsys, monkeypatch):
    import fantasy.weights.presets

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(fantasy.weights.presets, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    code = cli_main(["generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(speech_wav), "--out",
                     str(tmp_path / "x.mp4"), "--context-parallel", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == ("error: --context-parallel 2 needs 2 processes, but 1 was launched: run it under "
                                     "`torchrun --nproc_per_node 2 -m fantasy ...` (or `torchrun ... app.py`)")
    assert list(tmp_path.iterdir()) == [speech_wav]


@pytest.mark.parametrize("rank,said", [("0", True), ("1", False)])
def test_errors_before_the_group_is_joined_are_said_by_the_launchs_rank_0(rank, said, tmp_path, speech_wav, capsys,
                                                                         monkeypatch):
    """Every rank of a launch finds the same bad setting: only torchrun's RANK 0 says it (all exit with 2)."""
    monkeypatch.setenv("RANK", rank)
    code = cli_main(["generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(speech_wav), "--out",
                     str(tmp_path / "x.mp4"), "--steps", "0", "--context-parallel", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ("error: steps must be between 1 and 100, got 0" if said else "")


def test_app_as_a_front_end_refuses_context_parallel_before_contacting_the_server(monkeypatch):
    import fantasy.app.serve_client
    from fantasy.app import ui as app

    monkeypatch.setattr(fantasy.app.serve_client, "fetch_info", lambda *a: pytest.fail("the server was contacted"))
    message = ("error: --serve runs every generation on the deployment: drop --context-parallel here and start the "
               "deployment with `python -m fantasy serve --context-parallel N`")
    with pytest.raises(SystemExit, match=f"^{re.escape(message)}$"):
        app.main(["--serve", "http://127.0.0.1:9", "--context-parallel", "2"])


# ---- 2 processes equal 1 -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("processes,name", [(2, name) for name in CASES] + [(3, name) for name in CASES3])
def test_several_processes_give_the_one_process_latents(group_of, one_thread, processes, name):
    case = (CASES if processes == 2 else CASES3)[name]
    reference = call(build(case), case)
    parallel = torch.load(group_of(processes) / f"latents-{name}.pt")
    assert torch.equal(parallel, reference), (parallel - reference).abs().max().item()


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 3])
def test_sharded_weights_leave_each_rank_its_share(group_of, processes):
    """FSDP2: each rank holds about 1/N of the DiT's and umT5's parameter bytes (plus padding), together all of them."""
    from fantasy.speed.sharding import parameter_bytes

    cases = CASES if processes == 2 else CASES3
    for name in ("sharded+cache", "bf16-sharded"):
        whole = build(cases[name])
        held = [json.loads((group_of(processes) / f"bytes-{name}-rank{r}.json").read_text()) for r in range(processes)]
        for model in ("transformer", "text_encoder"):
            full = parameter_bytes(getattr(whole, model))
            shares = [h[model] for h in held]
            assert sum(shares) >= full and max(shares) <= full / processes * 1.1 + 4096, (name, model, full, shares)


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 3])
def test_a_gguf_q8_0_dit_shards_by_rows_and_computes_exactly(group_of, one_thread, processes):
    """GGUF Q8_0 weights sharded by FSDP2 (whole GGML blocks per row), wrapped back before each layer: the
    output equals one process's unsharded GGUF DiT, bit for bit; each rank holds a third / half of the bytes."""
    out = group_of(processes)
    reference = gguf_call(*gguf_transformer(out / "inputs"))
    assert torch.equal(torch.load(out / "gguf.pt"), reference)
    reports = [json.loads((out / f"gguf-rank{r}.json").read_text()) for r in range(processes)]
    whole = reports[0]["whole"]
    assert all(r["was_gguf"] and r["sharded_type"] == "DTensor" and r["whole"] == whole for r in reports)
    assert sum(r["held"] for r in reports) >= whole and max(r["held"] for r in reports) <= whole / processes * 1.1


@pytest.mark.slow
@pytest.mark.parametrize("processes,name", [(2, "batched+cache"), (2, "sharded+cache"), (3, "sharded+cache")])
def test_the_step_cache_decides_from_the_same_ratio_as_one_process(group_of, one_thread, processes, name):
    """Every rank computes exactly one process's ratios (not just close: a threshold may sit in a rounding gap)."""
    case = (CASES if processes == 2 else CASES3)[name]
    pipe = build(case)
    call(pipe, case)
    alone = list(pipe.transformer._fantasy_cache_decision.ratios)
    ranks = [json.loads((group_of(processes) / f"ratios-{name}-rank{r}.json").read_text()) for r in range(processes)]
    assert len(alone) == 4 and ranks == [alone] * processes


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 3])
def test_a_threshold_exactly_at_a_ratio_gives_the_one_process_video(group_of, one_thread, processes):
    """The threshold at one process's median ratio (`ratio > threshold` is then False by the last bit): the
    processes skip the same blocks as one process and give its latents."""
    out = group_of(processes)
    reports = [json.loads((out / f"blocks-cache-at-ratio-rank{r}.json").read_text()) for r in range(processes)]
    threshold = reports[0]["threshold"]
    case = (CASES if processes == 2 else CASES3)["sharded+cache"]
    case = dict(case, speed=dict(case["speed"], cache_threshold=threshold))
    pipe = build(case)
    counter = BlockCounter(pipe)
    reference = call(pipe, case)
    assert threshold in list(pipe.transformer._fantasy_cache_decision.ratios)
    assert [r["blocks"] for r in reports] == [counter.count] * processes
    assert torch.equal(torch.load(out / "latents-cache-at-ratio.pt"), reference)


@pytest.mark.slow
def test_a_hang_fails_fast_with_every_ranks_stage(tmp_path):
    """The watchdog's own test: with the step cache deciding per rank (the shared decision removed) the ranks
    wait for each other in different collectives; the collective timeout (15 s) ends them and the failure names
    where each rank was, in well under the old 300 s of silence."""
    from tests.process_watch import GroupFailed

    command = [*TORCHRUN, "-m", "tests.parallel_worker", str(tmp_path), "--local-cache-decisions"]
    started = time.monotonic()
    with pytest.raises(GroupFailed, match=r"exited with 1; last stages: rank 0") as failed:
        run_watched(command, ROOT, dict(TORCHRUN_ENV, FANTASY_TEST_COLLECTIVE_TIMEOUT="15"), tmp_path / "stages",
                    timeout=240)
    message = str(failed.value)
    assert time.monotonic() - started < 200, message
    assert re.search(r"exited with 1; last stages: rank 0: 'latents batched\+cache' \(\d+ s ago\); rank 1: "
                     r"'latents batched\+cache'", message), message
    assert "Timed out waiting 15000ms" in message or "Connection closed by peer" in message, message


@pytest.mark.slow
def test_the_bf16_cases_really_differ_between_precision_policies(one_thread):
    """Else the mixed/stock pair above would not test the policies under context parallelism."""
    mixed, stock = (call(build(CASES[name]), CASES[name]) for name in ("bf16-mixed", "bf16-stock"))
    assert mixed.dtype == stock.dtype == torch.float32 and (mixed - stock).abs().max() > 1e-2


@pytest.mark.slow
def test_the_step_cache_skips_the_same_blocks_on_both_ranks(two_processes, one_thread):
    case = CASES["batched+cache"]
    pipe = build(case)
    counter = BlockCounter(pipe)
    call(pipe, case)
    ranks = [json.loads((two_processes / f"blocks-batched+cache-rank{r}.json").read_text()) for r in (0, 1)]
    all_blocks = case["steps"] * len(pipe.transformer.blocks)  # one batched call per step
    assert ranks == [counter.count, counter.count] and counter.count < all_blocks  # it did skip


@pytest.mark.slow
def test_compiled_blocks_refuse_an_uneven_split_on_every_rank(two_processes):
    for rank in (0, 1):
        message = (two_processes / f"compile-rank{rank}.txt").read_text()
        assert message == ("compiled blocks under context parallelism need the video tokens (175 = 5 latent frames "
                           "x 5 x 7) to divide by 2 processes and the 2 heads by the Ulysses degree 2; change the size "
                           "or the frame count, or drop --compile")


@pytest.mark.slow
@pytest.mark.parametrize("windows", [1, 2])
def test_two_processes_write_the_one_process_mp4(two_processes, one_thread, tmp_path, windows):
    from fantasy.generation import generate
    from fantasy.weights.presets import get_preset
    from tests.parallel_worker import GEN_SETTINGS

    inputs = two_processes / "inputs"
    speech = {1: "speech-1s.wav", 2: "speech-1.5s.wav"}[windows]
    result = generate(build(CASES["even"]), inputs / "portrait.png", inputs / speech, tmp_path / "one.mp4",
                      GEN_SETTINGS[windows], get_preset("tiny"))
    assert result.windows == windows
    assert md5(two_processes / f"gen-{windows}.mp4") == md5(tmp_path / "one.mp4")


@pytest.mark.slow
def test_an_unusable_output_stops_every_rank_with_rank_0s_verdict(two_processes):
    """Only rank 0 writes, so only it checks the target (`generate --context-parallel` does this before any
    model loads); every rank raises its error, so none waits for rank 0 in a collective."""
    target = two_processes / "inputs" / "taken.mp4"
    reports = [json.loads((two_processes / f"target-rank{r}.json").read_text()) for r in (0, 1)]
    message = f"the output '{target}' is a directory: give a file name ending in .mp4"
    assert reports == [{"checked": True, "error": message}, {"checked": False, "error": message}]


@pytest.mark.slow
def test_release_mode_on_two_processes_writes_the_one_process_mp4(two_processes, one_thread, tmp_path):
    """`--release` (bf16 DiT, mixed precision, 30 steps, the release's decode) is exact under context parallelism."""
    from fantasy.generation import generate
    from fantasy.weights.presets import get_preset
    from tests.parallel_worker import RELEASE_SETTINGS, release_pipe

    inputs = two_processes / "inputs"
    result = generate(release_pipe(), inputs / "portrait.png", inputs / "speech-1s.wav", tmp_path / "one.mp4",
                      RELEASE_SETTINGS, get_preset("tiny"))
    assert result.release and result.num_frames == 25
    assert md5(two_processes / "gen-release.mp4") == md5(tmp_path / "one.mp4")


@pytest.mark.slow
def test_app_jobs_run_on_every_rank_and_stop_together(two_processes, one_thread, tmp_path):
    """Rank 0 runs four app jobs (the second stopped by the Stop button, the fourth by the app's shutdown as on
    a signal); rank 1 follows each one and ends with the group."""
    from fantasy.app.streaming import Finished
    from fantasy.app.studio import Controls, Studio
    from fantasy.app.validation import FaceChecker
    from fantasy.weights.presets import get_preset

    inputs = two_processes / "inputs"
    studio = Studio(build(CASES["even"]), get_preset("tiny"), FaceChecker(None, "skipped"), tmp_path)
    job = studio.check(inputs / "portrait.png", inputs / "speech-1s.wav",
                       Controls(steps=3, longest_edge=64, max_duration_s=1.0, seed=3))
    reference = md5(next(e for e in studio.run(job) if isinstance(e, Finished)).result.path)

    done, stopped, again, shut = json.loads((two_processes / "studio.json").read_text())
    finished = {"outcome": reference, "denoise_events": 3, "final_exists": True, "folder_exists": True,
                "shutdown_stopped": None}
    assert done == again == finished
    assert stopped["outcome"] == "stopped" and not stopped["final_exists"] and stopped["denoise_events"] < 3
    # the app's shutdown (on SIGTERM/SIGINT) stops the running job with the followers and removes its folder
    assert shut["outcome"] == "stopped" and shut["shutdown_stopped"] == 1 and not shut["folder_exists"]
    follower = json.loads((two_processes / "follow-rank1.json").read_text())
    speech = str(inputs / "speech-1s.wav")
    checkpoints = follower[0][1]
    assert follower == [[speech, checkpoints, "done"], [speech, follower[1][1], "stopped"],
                        [speech, checkpoints, "done"], [speech, follower[3][1], "stopped"]]
    assert 1 <= follower[1][1] < checkpoints and 1 <= follower[3][1] < checkpoints
    # rank 1 wrote no video: the run's folder holds rank 0's outputs and the harness's reports, nothing else
    reports = {f"{name}-rank{r}.{ext}" for r in (0, 1)
               for name, ext in (("blocks-batched+cache", "json"), ("compile", "txt"), ("target", "json"),
                                 ("blocks-sharded+cache", "json"), ("ratios-batched+cache", "json"),
                                 ("ratios-sharded+cache", "json"), ("bytes-sharded+cache", "json"),
                                 ("bytes-bf16-sharded", "json"), ("blocks-cache-at-ratio", "json"), ("gguf", "json"))}
    outputs = {f"latents-{name}.pt" for name in CASES} | {"gen-1.mp4", "gen-2.mp4", "gen-release.mp4", "studio",
                                                         "studio.json", "latents-cache-at-ratio.pt", "gguf.pt"}
    harness = {"inputs", "follow-rank1.json", "stages", "stages.stdout", "stages.stderr"}
    assert {p.name for p in two_processes.iterdir()} == reports | outputs | harness
    jobs = sorted((two_processes / "studio").iterdir())  # the shut-down job's folder is gone
    assert len(jobs) == 3 and sorted(any(j.glob("*.mp4")) for j in jobs) == [False, True, True]


@pytest.mark.slow
def test_generate_under_torchrun_writes_one_mp4_equal_to_one_process_in_stock_precision(tmp_path, one_thread):
    from fantasy.generation import generate
    from fantasy.weights.presets import get_preset
    from tests.parallel_worker import GEN_SETTINGS

    speech, portrait = speech_file(tmp_path, 1.5), portrait_file(tmp_path)
    work = tmp_path / "run"
    work.mkdir()
    done = run_torchrun(["-m", "fantasy", "generate", "--image", str(portrait), "--audio", str(speech), "--out",
                         "cp.mp4", "--steps", "2", "--size", "64", "--max-frames", "21", "--context-parallel", "2",
                         "--precision", "stock", "--no-face-check"], cwd=work)  # a drawn portrait
    assert sorted(p.name for p in work.iterdir()) == ["cp.mp4"]  # rank 1 wrote nothing
    assert done.stdout.count("wrote cp.mp4") == 1 and "2 windows" in done.stdout  # only rank 0 prints
    assert done.stderr.count("speed: DiT precision: stock") == 1
    for noise in ("experimental feature", "split will not be applied", "all_gather_tensor"):  # diffusers' CP notes
        assert noise not in done.stderr, done.stderr
    stock = dict(CASES["even"], speed={"precision": "stock"})
    generate(build(stock), portrait, speech, tmp_path / "one.mp4", GEN_SETTINGS[2], get_preset("tiny"))
    assert md5(work / "cp.mp4") == md5(tmp_path / "one.mp4")


@pytest.mark.slow
def test_ctrl_c_under_torchrun_stops_every_rank_and_leaves_nothing(tmp_path):
    """Ctrl-C reaches the launcher and both ranks (one process group); each rank is held after its first step
    by `tests.stage_hooks`, so the signal comes mid-denoising on both."""
    speech, portrait = speech_file(tmp_path, 1.0), portrait_file(tmp_path)
    work = tmp_path / "run"
    work.mkdir()
    command = [*TORCHRUN, "-m", "tests.stage_hooks", "denoise", "generate", "--image", str(portrait), "--audio",
               str(speech), "--out", "cp.mp4", "--steps", "3", "--size", "64", "--context-parallel", "2",
               "--no-face-check"]
    proc = subprocess.Popen(command, cwd=work, env=TORCHRUN_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "".join(lines).count("STAGE denoise") == 2:  # both ranks wait there
            break
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    lines.append(proc.stderr.read())
    proc.wait(timeout=120)
    err = "".join(lines)
    assert err.count("stopped (SIGINT), nothing written") == 1, err[-3000:]  # rank 0 says it, rank 1 is silent
    assert not re.search(r'File ".*/(fantasy|tests)/', err), err  # (torchrun prints its own SignalException)
    assert list(work.iterdir()) == [], err[-3000:]  # no video, no temporary file
