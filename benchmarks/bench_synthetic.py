"""Benchmark: write one 20k x 20k px synthetic slide and a 6-slide 8192 px cohort.

Goals on two CPU cores: the 20k slide in under a minute, the cohort well under a minute. Prints seconds, file
sizes, levels and the peak resident memory (the level-0 image is never held whole: a 20k slide would be 1.2 GB).

Usage:
    python benchmarks/bench_synthetic.py [--size 20000] [--cohort-size 8192] [--slides 6] [--workers 2]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from anomalib_wsi.data.synthetic import synthesize_cohort, synthesize_slide

GOAL_SLIDE_S = 60.0
GOAL_COHORT_S = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="side of the large slide in level-0 px")
    parser.add_argument("--cohort-size", type=int, default=8192, help="side of each cohort slide")
    parser.add_argument("--slides", type=int, default=6, help="cohort slides")
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=None, help="render/compress threads (default: up to 2)")
    parser.add_argument("--output", default=None, help="folder for the files (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.output or tmp)
        start = time.perf_counter()
        slide = synthesize_slide(root / "large.tif", size_px=args.size, mpp=args.mpp, seed=0, workers=args.workers)
        seconds = time.perf_counter() - start
        size_mb = slide.path.stat().st_size / 1e6
        levels = " ".join(f"{w}x{h}" for w, h in slide.level_dimensions)
        verdict = "ok" if seconds < GOAL_SLIDE_S else "SLOW"
        print(f"slide  {args.size}x{args.size} px: {seconds:6.1f} s  {size_mb:6.1f} MB  levels {levels}  [{verdict}]")

        start = time.perf_counter()
        cohort = synthesize_cohort(
            root / "cohort", n_slides=args.slides, seed=0, size_px=args.cohort_size, mpp=args.mpp
        )
        seconds = time.perf_counter() - start
        size_mb = sum(p.stat().st_size for p in cohort.slides) / 1e6
        verdict = "ok" if seconds < GOAL_COHORT_S else "SLOW"
        print(
            f"cohort {args.slides} x {args.cohort_size} px: {seconds:6.1f} s  {size_mb:6.1f} MB  "
            f"({len(cohort.tumour_slide_ids)} tumour, {len(cohort.normal_slide_ids)} normal)  [{verdict}]"
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak_mb:.0f} MB (includes memory-mapped reduced levels)")


if __name__ == "__main__":
    main()
