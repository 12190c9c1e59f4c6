"""Several prediction processes (torchrun, SLURM) and the run tables they share.

Each rank owns whole slides (``slides[rank::world]``), so no tile crosses ranks; :func:`write_run_tables` merges
the ranks' ``summary.csv`` and ``failures.csv``. :func:`default_num_workers` sizes the tile readers by the CPUs
this process may use.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from anomalib_wsi.files import atomic_write_csv, atomic_write_text
from anomalib_wsi.inference.settings import SlideFailure, SlidePrediction

__all__ = [
    "FAILURE_COLUMNS",
    "RUN_TABLES",
    "SUMMARY_COLUMNS",
    "default_num_workers",
    "distributed_rank",
    "process_group_ready",
    "write_run_tables",
]

logger = logging.getLogger(__name__)

#: The run tables every prediction writes beside the slide folders.
RUN_TABLES = ("summary.csv", "failures.csv")
SUMMARY_COLUMNS = ["slide_id", "slide_path", "slide_score", "n_tiles", "n_lesions", "mpp", "status"]
FAILURE_COLUMNS = ["slide_path", "slide_id", "stage", "error"]


def default_num_workers() -> int:
    """Tile-reading workers when none are asked for: half the CPUs this process may use, at most 8.

    "May use" counts CPU affinity (a SLURM allocation or ``taskset``), not the machine's cores, and is shared by
    the prediction processes of one node under torchrun (``LOCAL_WORLD_SIZE``). With direct TIFF decoding 8
    workers read well over the 3,000-5,000 tiles/s a large GPU scores.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_processes = 1
    return max(1, min(8, cpus // 2 // local_processes))


def distributed_rank() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` of this process: torch.distributed, torchrun or SLURM, else (0, 1, 0)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
        return dist.get_rank(), dist.get_world_size(), local
    for rank_key, world_key, local_key in (
        ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
        ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ):
        if rank_key in os.environ and world_key in os.environ:
            return int(os.environ[rank_key]), int(os.environ[world_key]), int(os.environ.get(local_key, "0"))
    return 0, 1, 0


def process_group_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def write_run_tables(
    output_dir: Path,
    results: list[SlidePrediction],
    failures: list[SlideFailure],
    order: list[str],
    rank: int = 0,
    world: int = 1,
) -> None:
    """Write ``summary.csv`` and ``failures.csv`` for the run (slides in the order given).

    With several ranks each one writes its part to ``.ranks/``. With a process group (torchrun, Lightning) the
    ranks wait for each other and rank 0 merges every part; without one (plain SLURM tasks) each rank merges the
    parts it finds, so the rank that finishes last writes tables that cover the whole run. Text cells are made
    spreadsheet-safe (:func:`~anomalib_wsi.files.spreadsheet_safe`).

    Raises:
        OSError: a table cannot be written (the caller reports it).
    """
    rows = [
        {
            "slide_id": r.slide_id,
            "slide_path": str(r.slide_path),
            "slide_score": r.slide_score,
            "n_tiles": r.n_tiles,
            "n_lesions": len(r.lesions),
            "mpp": r.mpp,
            "status": "skipped (done before)" if r.skipped else "done",
        }
        for r in results
    ]
    failure_rows = [failure.as_row() for failure in failures]
    position = {slide_id: i for i, slide_id in enumerate(order)}

    def write(summary_rows: list[dict[str, Any]], failure_rows: list[dict[str, str]]) -> None:
        summary = pd.DataFrame(summary_rows, columns=SUMMARY_COLUMNS)
        summary = summary.sort_values("slide_id", key=lambda c: c.map(lambda v: position.get(v, len(position))))
        atomic_write_csv(output_dir / RUN_TABLES[0], summary, ("slide_id", "slide_path"))
        atomic_write_csv(
            output_dir / RUN_TABLES[1], pd.DataFrame(failure_rows, columns=FAILURE_COLUMNS), tuple(FAILURE_COLUMNS)
        )

    if world <= 1:
        write(rows, failure_rows)
        return
    parts = output_dir / ".ranks"
    part = {"rank": rank, "world": world, "summary": rows, "failures": failure_rows}
    atomic_write_text(parts / f"rank{rank}-of-{world}.json", json.dumps(part, default=float))
    if process_group_ready():
        import torch.distributed as dist

        dist.barrier()  # every part is written: rank 0 writes the complete tables
        if rank != 0:
            return
    # Without a process group (plain SLURM tasks) every rank merges the parts it finds. Reading the parts again
    # after writing, and writing again when more appeared, makes the last write cover every part written before
    # it: a rank that wrote partial tables and then sees no new part knows that any later part's rank reads (and
    # writes) after that.
    seen = -1
    while True:
        found = [json.loads(p.read_text()) for p in sorted(parts.glob(f"rank*-of-{world}.json"))]
        if len(found) == seen:
            break
        seen = len(found)
        write([row for f in found for row in f["summary"]], [row for f in found for row in f["failures"]])
    if seen < world:
        logger.info("rank %d of %d done; the run tables are complete once every rank is", rank, world)
