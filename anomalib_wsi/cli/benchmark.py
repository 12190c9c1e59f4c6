"""``anomalib-wsi benchmark``: ``camelyon16`` (the paper's protocol on a Camelyon16 download) or ``models`` (anomalib
models trained on one split of one cohort and compared in one table)."""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser

from anomalib_wsi.errors import WSIError

__all__ = ["parser", "run"]

#: Options of one benchmark only (their defaults are None or False, so a given one is seen).
_CAMELYON16_ONLY = ("config", "dry_run", "paper_patches")
_MODELS_ONLY = (
    "models",
    "epochs",
    "seed",
    "mpp",
    "tile_size",
    "tiles_per_slide",
    "backbone",
    "weights_path",
    "num_workers",
)
_DEFAULT_OUTPUT = {"camelyon16": "camelyon16_run", "models": "model_comparison"}


def parser() -> ArgumentParser:
    """The sub-command's options."""
    p = ArgumentParser(
        description="Reproduce the paper's Camelyon16 protocol (camelyon16), or compare anomalib models on one "
        "cohort (models)."
    )
    p.add_argument(
        "dataset",
        choices=["camelyon16", "models"],
        help="camelyon16: the paper's protocol on a Camelyon16 download; models: train, predict and evaluate "
        "several models on the same split and print one table",
    )
    p.add_argument(
        "--root",
        default=None,
        help="camelyon16: the Camelyon16 folder (training/, testing/, lesion_annotations/ ...; required); models: "
        "a cohort folder or manifest (default: a synthetic cohort written under --output)",
    )
    p.add_argument("--output", default=None, help="the run's folder (default: camelyon16_run / model_comparison)")
    p.add_argument("--config", default=None, help="camelyon16: training config (default: packaged rd_focal_wsi.yaml)")
    p.add_argument("--dry-run", action="store_true", help="camelyon16: check the layout and print the plan only")
    p.add_argument(
        "--paper-patches",
        default=None,
        help="camelyon16: FW-RD's coordinate folder (train_good.txt, train_bad.txt, test_good.txt, test_bad.txt): "
        "train on the paper's 6,001 patches and add its patch-level test",
    )
    p.add_argument(
        "--models",
        default=None,
        help="models: comma-separated model names (default: RDFocal,ReverseDistillation,Padim,Patchcore,Stfpm)",
    )
    p.add_argument("--epochs", type=int, default=None, help="models: training epochs (default 2)")
    p.add_argument("--seed", type=int, default=None, help="models: seed of cohort, split and training (default 0)")
    p.add_argument("--mpp", type=float, default=None, help="models: tile resolution in µm/px (default 1.0)")
    p.add_argument("--tile-size", type=int, default=None, help="models: tile side in px, a multiple of 32 (default 64)")
    p.add_argument(
        "--tiles-per-slide", type=int, default=None, help="models: training / test tiles per slide (default 100)"
    )
    p.add_argument("--backbone", default=None, help="models: every model's backbone (default resnet18)")
    p.add_argument(
        "--weights-path", default=None, help="models: local pre-trained weights of the backbone (default: random)"
    )
    p.add_argument("--num-workers", type=int, default=None, help="models: DataLoader workers (default 0)")
    return p


def run(**options: Any) -> int:
    """Run the sub-command; returns the exit status."""
    dataset = options.pop("dataset")
    other = _MODELS_ONLY if dataset == "camelyon16" else _CAMELYON16_ONLY
    given = [name for name in other if options.get(name) not in (None, False)]
    if given:
        flag = "--" + given[0].replace("_", "-")
        other_name = "models" if dataset == "camelyon16" else "camelyon16"
        msg = f"{flag} applies to `benchmark {other_name}` only, not `benchmark {dataset}`; leave it out"
        raise WSIError(msg)
    output = options.get("output") or _DEFAULT_OUTPUT[dataset]
    if dataset == "camelyon16":
        from anomalib_wsi.reproduction import benchmark_command

        if options.get("root") is None:
            msg = "benchmark camelyon16 needs --root: pass the Camelyon16 folder (training/, testing/, ...)"
            raise WSIError(msg)
        kept = {name: options[name] for name in ("root", *_CAMELYON16_ONLY) if name in options}
        return int(benchmark_command(dataset, output=output, **kept) or 0)

    from anomalib_wsi.model_comparison import models_command

    chosen = {name: options[name] for name in _MODELS_ONLY if options.get(name) is not None}
    return models_command(root=options.get("root"), output=output, **chosen)
