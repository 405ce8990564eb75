"""DVC stage `classifier`: the small CNN whose penultimate features score sample quality,
trained on the prepared training split of a labelled image dataset -> models/classifier.pt
(weights, architecture, config, accuracies) and reports/classifier.json (test and train
accuracy). For a dataset without labels (the Swiss roll) both say that no classifier applies.
Nothing goes to MLflow here: the quality stage reports the accuracy to the experiment's run."""

from __future__ import annotations

import dataclasses
import sys
import time

from ddpm.config import load_params
from ddpm.data import load_prepared
from ddpm.errors import DataError, DatasetNotFoundError, TrainingDiverged
from ddpm.io import atomic_write_json
from ddpm.pipeline.runtime import print0, resolve_device, set_threads
from ddpm.pipeline.stage import progress_bar, run_stage, stage_parser
from ddpm.quality.classifier import accuracy, labelled_splits, save_classifier, train_classifier

HINTS = {
    DatasetNotFoundError: "`dvc repro prepare` writes data/prepared",
    DataError: "`dvc repro prepare` rewrites data/prepared (with the class labels of labelled datasets)",
    TrainingDiverged: "lower the learning rate, e.g. `dvc exp run -S classifier.lr=3e-4`",
}


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--out", default="models/classifier.pt")
    parser.add_argument("--metrics", default="reports/classifier.json")

    def body(args) -> None:
        params = load_params(args.params)
        prepared = load_prepared(args.data)
        meta = prepared.meta
        # Data that may come without labels: vectors (the Swiss roll), a folder of images without
        # class subfolders. The built-in image datasets always have them (labelled_splits checks).
        if meta["num_classes"] is None and (meta["kind"] == "vector" or meta["dataset"] == "folder"):
            reason = f"dataset {meta['dataset']!r} has no class labels, so there is no classifier to train"
            save_classifier(args.out, None, {"applicable": False, "reason": reason, "dataset": meta["dataset"]})
            atomic_write_json(args.metrics, {"applicable": False, "reason": reason})
            return
        train_x, train_y, test_x, test_y, num_classes = labelled_splits(prepared, args.data)
        set_threads(params.train.num_threads)
        device = resolve_device(params.train.device)
        config = params.classifier
        start = time.perf_counter()
        with progress_bar("classifier", "step") as on_step:
            model = train_classifier(train_x, train_y, num_classes, config, params.seed, device, on_step)
        seconds = time.perf_counter() - start
        report = {"test_accuracy": accuracy(model, test_x, test_y), "train_accuracy": accuracy(model, train_x, train_y),
                  "num_test": len(test_y), "steps": config.steps}
        print0(f"classifier: {config.steps} steps in {seconds:.1f} s on {device} "
               f"({config.steps * config.batch_size / seconds:.0f} images/s); test accuracy "
               f"{report['test_accuracy']:.4f} on {len(test_y)} images, train accuracy {report['train_accuracy']:.4f}")
        info = {"applicable": True, "dataset": meta["dataset"], "shape": list(meta["shape"]),
                "num_levels": meta["num_levels"], "num_classes": num_classes, "config": dataclasses.asdict(config),
                "seed": params.seed, "num_train": len(train_y), **report}
        save_classifier(args.out, model, info)
        atomic_write_json(args.metrics, report)

    return run_stage("classifier", body, parser, argv, hints=HINTS)


if __name__ == "__main__":
    sys.exit(main())
