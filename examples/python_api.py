"""anomalib-wsi from Python: synthetic cohort -> WSIDataModule -> RDFocal -> WSIEngine.predict -> QuPath GeoJSON.

    python examples/python_api.py --output example_output            # about a minute on two CPU cores

Swap the synthetic cohort for your slides: ``WSIDataModule(root="slides/", annotations="lesion_annotations/")``
or a manifest CSV, and the tiny resnet18 for ``backbone="wide_resnet50_2"`` with ``weights_path=...`` on a GPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anomalib_wsi import RDFocal, WSIDataModule, WSIEngine
from anomalib_wsi.data import synthesize_cohort
from anomalib_wsi.inference import trained_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("example_output"))
    parser.add_argument("--slides", type=int, default=8, help="synthetic slides (half with tumour)")
    parser.add_argument("--size", type=int, default=3072, help="slide side in pixels at 0.5 µm/px")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    # 1. data: pyramidal TIFFs + Camelyon16-style ASAP XML, tiled at 1 µm/px into 64 px tiles
    cohort = synthesize_cohort(args.output / "cohort", n_slides=args.slides, size_px=args.size, seed=0)
    datamodule = WSIDataModule(
        root=cohort.root,  # slides/, annotations/ and labels.csv
        mpp=1.0,
        tile_size_px=64,
        normal_tiles_per_slide=150,
        tumour_tiles_per_slide=60,
        val_ratio=0.25,
        test_ratio=0.25,
        num_workers=0,
    )

    # 2. model: reverse distillation with the focal cosine loss; no pretrained weights needed here
    model = RDFocal(backbone="resnet18", pre_trained=False, image_size=64, loss="focal", visualizer=False)

    # 3. train with anomalib's engine (WSIEngine is an anomalib Engine)
    engine = WSIEngine(max_epochs=args.epochs, accelerator="cpu", default_root_dir=args.output / "results")
    engine.fit(model=model, datamodule=datamodule)
    checkpoint = trained_checkpoint(engine, args.output / "model.ckpt")

    # 4. predict the held-out slides: heatmaps, lesions, detections, slide scores
    held_out = [record.slide_path for record in datamodule.records if record.split == "test"]
    results = WSIEngine(num_workers=0).predict(
        model=RDFocal, ckpt_path=checkpoint, slides=held_out, output_dir=args.output / "predictions"
    )
    for result in results:
        truth = "tumour" if result.slide_id in cohort.tumour_slide_ids else "normal"
        print(
            f"{result.slide_id}: {truth:6s} slide score {result.slide_score:.3f}, {len(result.lesions)} lesions "
            f"-> {result.geojson_path} (File > Import objects in QuPath)"
        )


if __name__ == "__main__":
    main()
