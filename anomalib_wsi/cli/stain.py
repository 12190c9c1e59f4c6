"""``anomalib-wsi stain fit``: fit a stain reference (Macenko or Reinhard) to reference tissue, written as JSON.

The JSON is what ``data.stain_reference`` of a training config takes (with ``data.stain_normalization`` of the
same method); training stores it in the checkpoint, and prediction normalises to it with no option.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from anomalib_wsi.errors import WSIError

__all__ = ["parser", "run", "stain_fit_command"]

logger = logging.getLogger(__name__)


def parser() -> ArgumentParser:
    """The sub-command's options."""
    p = ArgumentParser(description="Stain normalisation: fit a Macenko or Reinhard reference, written as JSON.")
    p.add_argument("action", choices=["fit"], help="fit: fit a reference to tissue images or a slide region")
    p.add_argument(
        "reference", nargs="+", help="reference tissue: image files (PNG/JPEG/TIFF), folders of them, SLIDE@x,y,w,h"
    )
    p.add_argument("--method", default="macenko", choices=["macenko", "reinhard"], help="normalisation method")
    p.add_argument("--output", required=True, help="the JSON file to write (data.stain_reference takes it)")
    return p


def run(**options: Any) -> int:
    """Run the sub-command; returns the exit status."""
    options.pop("action", None)  # "fit", the only action
    return stain_fit_command(**options)


def stain_fit_command(reference: list[str], output: str, method: str = "macenko") -> int:
    """Fit ``method`` to the pixels of all ``reference`` images together and write the fit to ``output``.

    Returns:
        0 on success.

    Raises:
        WSIError: a reference that cannot be read, holds almost no stained tissue, or an output that cannot be
            written.
    """
    from anomalib_wsi.data.stain import fit_reference, reference_images
    from anomalib_wsi.files import atomic_write_text

    images = [image for spec in reference for image in reference_images(spec)]
    fitted = fit_reference(images, method, where=", ".join(reference))
    path = Path(output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(fitted.as_dict(), indent=2) + "\n")
    except OSError as err:
        msg = f"{path}: cannot write the stain reference ({err.strerror}); choose another --output"
        raise WSIError(msg) from None
    logger.info("%s reference from %d image(s) written to %s", method, len(images), path)
    return 0
