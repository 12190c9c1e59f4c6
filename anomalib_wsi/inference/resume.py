"""Resume: a slide whose folder already holds outputs with the same fingerprint is read back, not predicted again.

The fingerprint of a run covers what decides a slide's outputs:

- the model: for a model exported to OpenVINO or ONNX, SHA-256s of its files (network, weights, metadata);
  otherwise a SHA-256 of the checkpoint file's bytes (cached per path, size, inode, mtime and ctime, so a
  process reads a checkpoint once; a different model of the same size and time is told apart), or, for a model
  passed without a checkpoint, of its weights;
- the :class:`~anomalib_wsi.inference.settings.PredictionSettings`;
- every slide-level setting of the post-processor (its own list, ``WSIPostProcessor.slide_settings``, so that
  no setting can be left out) and its learnt statistics.

A slide's fingerprint adds the slide file (resolved path, size, nanosecond mtime) and a manifest mpp.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from anomalib_wsi.errors import WSIError
from anomalib_wsi.inference.settings import PredictionSettings, SlidePrediction
from anomalib_wsi.post_processing.outputs import read_slide_outputs, read_summary

__all__ = [
    "file_digest",
    "load_finished",
    "model_digest",
    "post_processor_settings",
    "run_fingerprint",
    "slide_fingerprint",
]

logger = logging.getLogger(__name__)

_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content, cached per resolved path, size, inode and nanosecond mtime and ctime.

    The ctime and inode change with any write or replacement of the file and cannot be set back (``touch`` sets
    only the mtime), so a cached digest is never reused for other bytes.
    """
    resolved = path.resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with resolved.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def model_digest(module: Any) -> str:
    """SHA-256 of a model's weights (for a model given without a checkpoint)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def post_processor_settings(post: Any) -> dict[str, Any]:
    """The post-processor's slide-level settings and statistics, as plain data (empty for other post-processors)."""
    settings = getattr(post, "slide_settings", None)
    return dict(settings()) if callable(settings) else {}


def run_fingerprint(ckpt_path: Path | None, module: Any, settings: PredictionSettings) -> str:
    """The fingerprint of a run: model content, prediction settings and post-processor settings."""
    exported = getattr(module, "export_files", None)  # an exported model: its network, weights and metadata files
    if exported:
        model = "export:" + ",".join(file_digest(Path(path)) for path in exported)
    elif ckpt_path is not None and ckpt_path.is_file():
        model = f"ckpt:{file_digest(ckpt_path)}"
    else:
        model = f"weights:{model_digest(module)}"
    blob = json.dumps(
        {"model": model, "settings": settings.as_dict(), "post": post_processor_settings(module.post_processor)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def slide_fingerprint(run: str, slide_path: Path, slide_mpp: float | None) -> str:
    """The run's fingerprint plus what identifies the slide: its file (path, size, time) and a manifest mpp."""
    try:
        stat = slide_path.stat()
        file_key = f"{slide_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        file_key = str(slide_path)
    blob = json.dumps({"run": run, "slide": file_key, "slide_mpp": slide_mpp}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_finished(slide_dir: Path, fingerprint: str, slide_path: Path) -> SlidePrediction | None:
    """A finished prediction with the same fingerprint, read back from its files; None to predict the slide."""
    try:
        if read_summary(slide_dir / "summary.json").get("fingerprint") != fingerprint:
            return None
    except WSIError:
        return None
    try:  # a damaged or edited file means: predict the slide again
        outputs = read_slide_outputs(slide_dir)
        summary = outputs.summary
        prediction = SlidePrediction(
            slide_id=str(summary["slide_id"]),
            slide_path=slide_path,
            slide_score=float(summary["slide_score"]),
            heatmap=outputs.heatmap,
            lesions=outputs.lesions,
            detections=outputs.detections,
            paths=outputs.paths,
            n_tiles=int(summary["n_tiles"]),
            mpp=float(summary["mpp"]),
            timings={str(k): float(v) for k, v in dict(summary.get("timings", {})).items()},
            skipped=True,
        )
    except (WSIError, KeyError, TypeError, ValueError) as err:
        logger.warning("%s: outputs of an earlier run are unreadable (%s); predicting it again", slide_dir, err)
        return None
    return prediction
