"""Latency and throughput of the warm sandbox pool against a fresh `python -c` per call.

    .venv/bin/python benchmarks/sandbox.py [--calls 200] [--fresh-calls 10]

Targets: trivial-snippet p50 under 1 ms and >= 20x faster than a fresh process per call.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image  # noqa: E402

from sandbox import InterpreterPool  # noqa: E402

TRIVIAL = "x = 6 * 7\nprint(x)"
CROP = "input_image.crop((100, 80, 340, 260))"
FRESH_IMPORTS = ("import numpy, cv2, matplotlib; matplotlib.use('Agg'); "
                 "import matplotlib.pyplot; from PIL import Image; ")
FRESH_TRIVIAL = FRESH_IMPORTS + "x = 6 * 7; print(x)"
FRESH_CROP = (FRESH_IMPORTS + "import io, sys; im = Image.open('input_image.jpg'); "
              "b = io.BytesIO(); im.crop((100, 80, 340, 260)).save(b, 'PNG'); "
              "sys.stdout.buffer.write(b.getvalue())")


def test_image() -> bytes:
    buffer = io.BytesIO()
    Image.effect_mandelbrot((640, 480), (-2, -1.2, 1, 1.2), 60).convert("RGB").save(
        buffer, format="JPEG")
    return buffer.getvalue()


def percentiles(samples):
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


def time_calls(call, count):
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--fresh-calls", type=int, default=10)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    image = test_image()

    started = time.perf_counter()
    with InterpreterPool(num_workers=2, timeout_s=15, backend=args.backend) as pool:
        startup = time.perf_counter() - started
        print(f"isolation: {pool.isolation.backend} ({pool.isolation.level}); "
              f"pool start {startup * 1000:.0f} ms")

        def trivial():
            assert pool.execute("bench", TRIVIAL).stdout == "42\n"

        def crop():
            assert len(pool.execute("bench", CROP).images) == 1

        pool.execute("bench", "pass", files={"input_image.jpg": image})
        for _ in range(10):
            trivial()
        warm_trivial = time_calls(trivial, args.calls)
        warm_crop = time_calls(crop, args.calls // 2)

        first_call = time_calls(lambda: (pool.execute("new", TRIVIAL),
                                         pool.close_session("new")), 20)

        throughput = {}
        for name, code in (("trivial", TRIVIAL), ("crop", CROP)):
            sessions = [f"tp-{i}" for i in range(8)]
            for s in sessions:
                pool.execute(s, "pass", files={"input_image.jpg": image})
            count = args.calls * 2
            started = time.perf_counter()
            futures = [pool.submit(sessions[i % 8], code) for i in range(count)]
            assert all(f.result().ok for f in futures)
            throughput[name] = count / (time.perf_counter() - started)

    with tempfile.TemporaryDirectory() as workdir:
        with open(os.path.join(workdir, "input_image.jpg"), "wb") as handle:
            handle.write(image)

        def fresh(code):
            def call():
                subprocess.run([sys.executable, "-c", code], cwd=workdir, check=True,
                               capture_output=True)
            return call
        fresh_trivial = time_calls(fresh(FRESH_TRIVIAL), args.fresh_calls)
        fresh_crop = time_calls(fresh(FRESH_CROP), args.fresh_calls)

    def row(name, warm, cold):
        print(f"{name:<28} p50 {warm[0] * 1000:8.2f} ms  p95 {warm[1] * 1000:8.2f} ms   "
              f"fresh process p50 {cold[0] * 1000:8.1f} ms  p95 {cold[1] * 1000:8.1f} ms   "
              f"speedup (p50) {cold[0] / warm[0]:6.1f}x")

    print(f"cores: {os.cpu_count()}, warm calls: {args.calls}, fresh calls: {args.fresh_calls}")
    row("trivial snippet", warm_trivial, fresh_trivial)
    row("crop + return image", warm_crop, fresh_crop)
    print(f"{'new session + first call':<28} p50 {first_call[0] * 1000:8.2f} ms  "
          f"p95 {first_call[1] * 1000:8.2f} ms")
    print(f"throughput, 2 workers, 8 sessions: trivial {throughput['trivial']:.0f} calls/s, "
          f"crop {throughput['crop']:.0f} calls/s")
    p50_ok = warm_trivial[0] < 0.001
    ratio_ok = fresh_trivial[0] / warm_trivial[0] >= 20
    print(f"target trivial p50 < 1 ms: {'met' if p50_ok else 'MISSED'}; "
          f">= 20x faster than a fresh process: {'met' if ratio_ok else 'MISSED'}")


if __name__ == "__main__":
    main()
