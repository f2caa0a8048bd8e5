"""The app under simultaneous joins: its memory with pixel-bomb uploads, and how many generations its queue accepts.

    python -m tools.app_joins --out OUT.json             # `python app.py` (tiny preset) in a child process

Two measurements on the real app, driven over HTTP with `gradio_client`, one thread per client, all released at
once by a barrier:

1. memory: `--bombs` (6) clients send at the same moment a small PNG (about 100 KB) that decodes to 62 megapixels
   (7,874 x 7,874, one flat colour, so the face check refuses it). The app's RSS is sampled every 10 ms: before,
   the peak while the joins are checked, and after (2 s after the last reply);
2. queue: `--joins` (16) clients ask for a generation at the same moment while one long generation holds the
   device; the app waits for at most 1 running + `MAX_QUEUE` (8) waiting, so 9 are accepted and the rest hear
   the busy message. Counted from the replies (each accepted one is stopped once it is counted).

Linux only (/proc). The child is `python app.py --host 127.0.0.1 --port P` with TMPDIR in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOMB_SIDE = 7874  # 62.0 Mpx: under the 64 Mpx header limit, so only a bounded decode keeps it cheap


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Sampler:
    """The peak RSS of a process, sampled every 10 ms in a thread, between `start()` and `stop()`."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.01)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def bomb_png(path: Path, side: int = BOMB_SIDE) -> Path:
    from PIL import Image

    Image.new("RGB", (side, side), (128, 128, 128)).save(path, optimize=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(tmp: Path, extra: list[str], root: Path = ROOT) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp),
           "OMP_NUM_THREADS": "1"}
    env.pop("SPACE_ID", None)
    log = (tmp / "app.log").open("w")
    proc = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port), *extra],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise RuntimeError("app.py ended:\n" + (tmp / "app.log").read_text()[-3000:])
        if time.monotonic() > deadline:
            raise RuntimeError("app.py did not start in 600 s")
        try:
            if httpx.get(url + "config", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


def simultaneously(count: int, action) -> list:
    """`action(i)` in `count` threads released together; their results (or exceptions) in order."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = action(i)
        except Exception as exc:  # the reply is the measurement
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False, httpx_kwargs={"timeout": 900})


def measure_bombs(url: str, pid: int, png: Path, speech: Path, count: int) -> dict:
    from gradio_client import handle_file

    clients = [client(url) for _ in range(count)]
    time.sleep(2)
    before = rss_mb(pid)
    sampler = Sampler(pid).start()
    replies = simultaneously(count, lambda i: clients[i].predict(
        image=handle_file(png), audio=handle_file(speech), steps=2, resolution=64, max_duration=1.0,
        api_name="/generate"))
    time.sleep(2)
    peak, after = sampler.stop(), rss_mb(pid)
    return {"clients": count, "png_bytes": png.stat().st_size, "megapixels": BOMB_SIDE**2 / 1e6,
            "rss_before_mb": round(before), "rss_peak_mb": round(peak), "rss_after_mb": round(after),
            "replies": sorted({str(r).splitlines()[-1][:160] for r in replies})}


def measure_queue(url: str, speech: Path, count: int) -> dict:
    from gradio_client import handle_file
    from gradio_client.utils import Status

    holder = client(url)
    long_run = holder.submit(image=handle_file(ROOT / "examples" / "portrait.png"), audio=handle_file(speech),
                             steps=50, resolution=256, max_duration=10.0, api_name="/generate")
    while long_run.status().code not in (Status.PROGRESS,):
        time.sleep(0.2)
    clients = [client(url) for _ in range(count)]
    jobs = simultaneously(count, lambda i: clients[i].submit(
        image=handle_file(ROOT / "examples" / "portrait.png"), audio=handle_file(speech), steps=50, resolution=256,
        max_duration=10.0, api_name="/generate"))
    settled = {Status.IN_QUEUE, Status.PROCESSING, Status.ITERATING, Status.PROGRESS}
    deadline, stable_since, last = time.monotonic() + 600, time.monotonic(), None
    while time.monotonic() < deadline:  # until every join is answered and nothing changes for 5 s
        states = [("refused" if isinstance(job, Exception) or (job.done() and job.exception() is not None)
                   else "waiting" if job.status().code in settled else "joining") for job in jobs]
        if states != last:
            last, stable_since = states, time.monotonic()
        elif "joining" not in states and time.monotonic() - stable_since > 5:
            break
        time.sleep(0.2)
    busy, accepted = last.count("refused"), last.count("waiting")
    for job in [long_run, *jobs]:
        if not isinstance(job, Exception):
            job.cancel()
    return {"simultaneous_joins": count, "accepted": accepted, "refused": busy, "running_before": 1,
            "unanswered": last.count("joining")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bombs", type=int, default=6)
    parser.add_argument("--joins", type=int, default=16)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--skip-queue", action="store_true")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose app.py runs (default: this one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        png = bomb_png(tmp / "bomb.png")
        speech = ROOT / "examples" / "speech.wav"
        proc, url = start_app(tmp, [], args.root)
        try:
            report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()}-core CPU", "root": str(args.root),
                      "memory": measure_bombs(url, proc.pid, png, speech, args.bombs)}
            if not args.skip_queue:
                report["queue"] = measure_queue(url, speech, args.joins)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
