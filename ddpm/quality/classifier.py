"""The feature network of the sample-quality metrics on labelled image datasets: a small CNN
that the pipeline trains on the training split, so that no network is downloaded at run time.

Its penultimate activations (``Classifier.features``) are the space in which a Frechet
distance, KID, precision/recall and density/coverage compare samples with real images, the
role Inception's pool features play in FID (Heusel et al. 2017); its predictions give the label
distribution of samples. The numbers are therefore "in this classifier's features", not FID.

Images enter in model space [-1, 1] (``ddpm.data.scaling.to_model_space``), the space the
diffusion model's samples live in, so real and generated images go through the same function.
Randomness comes from the ``classifier`` stream of ``ddpm.seeding``: key 0 the initial weights,
key 1 (item: epoch) the order of the training examples.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ddpm import seeding
from ddpm.config import ClassifierConfig
from ddpm.data.prepared import Prepared
from ddpm.data.scaling import to_model_space
from ddpm.errors import CheckpointError, DataError, TrainingDiverged
from ddpm.pipeline.checkpoint import load_checkpoint, save_checkpoint
from ddpm.progress import OnStep

KIND = "classifier"         # marks a classifier checkpoint apart from the diffusion model's
_STAGE_WIDTHS = (1, 2, 4)   # channels of each resolution stage, in units of ``width``
_MAX_GROUPS = 8             # GroupNorm groups (fewer when the channels are not a multiple of 8)



class Classifier(nn.Module):
    """A 3x3 convolution at each of three resolutions (``width``, 2 ``width`` and 4 ``width``
    channels, 2x2 average pooling between them), global average pooling, a penultimate layer of
    ``feature_dim`` units and a linear layer to the classes.

    Why this shape:
    - three stages bring 8x8 digits to 2x2, 28x28 MNIST to 7x7 and 32x32 CIFAR-10 to 8x8 before
      the global pool, so one network serves every image dataset; one convolution per stage
      keeps the default digits run to seconds on a CPU (two per stage cost several times as
      much and were no more accurate on digits);
    - GroupNorm, not BatchNorm: an image's features depend neither on the batch it is in nor on
      running statistics, so train and eval mode are the same function and the features of
      real and generated images are computed alike;
    - SiLU, whose units never die (ReLU's can stay at zero for every input): every feature
      varies over the data, so the features' covariance, which the Frechet distance takes a
      square root of, has no constant directions from dead units.
    """

    def __init__(self, shape: tuple[int, int, int], num_classes: int, width: int = 32, feature_dim: int = 64):
        super().__init__()
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (C, H, W) with positive sizes, got {tuple(shape)}")
        if num_classes < 2 or width < 1 or feature_dim < 1:
            raise ValueError(f"need num_classes >= 2, width >= 1 and feature_dim >= 1; "
                             f"got {num_classes}, {width}, {feature_dim}")
        self.shape, self.num_classes = tuple(int(s) for s in shape), int(num_classes)
        self.width, self.feature_dim = int(width), int(feature_dim)
        layers: list[nn.Module] = []
        channels = self.shape[0]
        for stage, multiple in enumerate(_STAGE_WIDTHS):
            if stage:
                layers.append(nn.AvgPool2d(2, ceil_mode=True))  # ceil: odd sizes (7x7) keep their border
            out = width * multiple
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.GroupNorm(math.gcd(_MAX_GROUPS, out), out),
                       nn.SiLU()]
            channels = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(channels, feature_dim), nn.SiLU())
        self.out = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate activations [N, feature_dim] of images ``x`` [N, C, H, W] in [-1, 1]."""
        return self.head(self.body(x).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [N, num_classes]."""
        return self.out(self.features(x))

    def architecture(self) -> dict[str, Any]:
        """The constructor's arguments, as saved with the weights."""
        return {"shape": list(self.shape), "num_classes": self.num_classes, "width": self.width,
                "feature_dim": self.feature_dim}


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, config: ClassifierConfig,
                     seed: int, device: torch.device | str, on_step: OnStep | None = None) -> Classifier:
    """Train a :class:`Classifier` on ``images`` [N, C, H, W] in [-1, 1] with ``labels`` [N]
    in 0..num_classes-1: ``config.steps`` Adam steps (``config.lr``) on minibatches of
    ``config.batch_size`` examples, each epoch a fresh permutation of the examples.

    Deterministic on the CPU for a given ``seed``. Returns the network in eval mode, without
    gradients, on ``device``. ``on_step(done, total)`` reports progress. TrainingDiverged
    when the weights become NaN or infinite (too large ``classifier.lr``).
    """
    _check_images(images)
    if labels.shape != (len(images),) or labels.dtype != torch.int64:
        raise ValueError(f"labels must be int64 of shape [{len(images)}], got {labels.dtype} {list(labels.shape)}")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, found {int(labels.min())}..{int(labels.max())}")
    if not isinstance(config.steps, int) or config.steps < 1:
        raise ValueError(f"config.steps must be a resolved integer >= 1, got {config.steps!r}")
    # Initial weights from the classifier's own stream; the global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.stream_seed(seed, "classifier", key=(0,)))
        model = Classifier(tuple(images.shape[1:]), num_classes, config.width, config.feature_dim)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    images, labels = images.to(device), labels.to(device)
    for step, index in enumerate(_minibatches(len(images), config.batch_size, config.steps, seed)):
        index = index.to(device)
        loss = F.cross_entropy(model(images[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step + 1, config.steps)
    # Checked once at the end (a per-step check would synchronise a GPU every step).
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise TrainingDiverged(f"the classifier's weights became NaN or infinite with classifier.lr={config.lr}; "
                               "accepted: a smaller learning rate")
    return model.eval().requires_grad_(False)


def _minibatches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """``steps`` index batches: each epoch a permutation of 0..n-1 (stream ``classifier``, key 1,
    item epoch) cut into whole batches of min(batch_size, n); the remainder is left out."""
    batch = min(batch_size, n)
    step, epoch = 0, 0
    while True:
        order = torch.randperm(n, generator=seeding.generator(seed, "classifier", item=epoch, key=(1,)))
        for start in range(0, n - batch + 1, batch):
            if step == steps:
                return
            yield order[start:start + batch]
            step += 1
        epoch += 1


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or not images.is_floating_point() or len(images) == 0:
        raise ValueError(f"images must be a non-empty float tensor [N, C, H, W] in [-1, 1], "
                         f"got {images.dtype} of shape {list(images.shape)}")


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], model: Classifier, images: torch.Tensor,
             batch_size: int) -> list[torch.Tensor]:
    if images.ndim != 4 or tuple(images.shape[1:]) != model.shape:
        raise ValueError(f"images must have shape [N, {', '.join(map(str, model.shape))}] for this classifier, "
                         f"got {list(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    return [fn(images[i:i + batch_size].to(device, torch.float32)).cpu() for i in range(0, len(images), batch_size)]


def classifier_features(model: Classifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Penultimate features of ``images`` [N, C, H, W] in [-1, 1]: float64 [N, feature_dim] on the CPU."""
    parts = _batched(model.features, model, images, batch_size)
    return torch.cat(parts).double() if parts else torch.zeros(0, model.feature_dim, dtype=torch.float64)


def predict_labels(model: Classifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The most likely class of each image: int64 [N] on the CPU."""
    parts = _batched(lambda x: model(x).argmax(dim=1), model, images, batch_size)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """The fraction of ``images`` whose predicted class equals ``labels``."""
    if len(images) == 0 or labels.shape != (len(images),):
        raise ValueError(f"need a non-empty batch and one label per image; got {len(images)} images "
                         f"and labels of shape {list(labels.shape)}")
    return float((predict_labels(model, images, batch_size) == labels.cpu()).double().mean())


def labelled_splits(prepared: Prepared, where: str | os.PathLike[str]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Train images, train labels, test images, test labels (images in [-1, 1], labels int64)
    and the number of classes of a prepared labelled image dataset.

    DataError naming ``where`` when the prepared data hold no labels or no class count.
    """
    meta = prepared.meta
    num_classes = meta.get("num_classes")
    if prepared.train_labels is None or prepared.test_labels is None or not num_classes:
        raise DataError(f"prepared data in {str(where)!r} hold no class labels (train_labels.npy, test_labels.npy "
                        f"and meta.json's num_classes) although dataset {meta['dataset']!r} is labelled; "
                        "the classifier needs them: prepare the data again with this version")
    k = meta["num_levels"]

    def tensors(levels: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(to_model_space(levels, k)), torch.from_numpy(np.asarray(labels, dtype=np.int64))

    return (*tensors(prepared.train, prepared.train_labels), *tensors(prepared.test, prepared.test_labels),
            int(num_classes))


def save_classifier(path: str | os.PathLike[str], model: Classifier | None, info: dict[str, Any]) -> Path:
    """Write the classifier (weights on the CPU, its architecture) and ``info`` atomically.

    ``model=None`` records that no classifier applies (``info`` says why)."""
    state = {"kind": KIND, "info": dict(info), "architecture": None, "weights": None}
    if model is not None:
        state["architecture"] = model.architecture()
        state["weights"] = {name: t.detach().cpu() for name, t in model.state_dict().items()}
    return save_checkpoint(path, state)


def load_classifier(path: str | os.PathLike[str], device: torch.device | str = "cpu"
                    ) -> tuple[Classifier | None, dict[str, Any]]:
    """The classifier saved by :func:`save_classifier` (eval mode, on ``device``) and its info;
    ``(None, info)`` when none applies. CheckpointError naming the file when it is missing,
    corrupt or not a classifier checkpoint (e.g. the diffusion model's)."""
    state = load_checkpoint(path, map_location="cpu")
    if state.get("kind") != KIND:
        raise CheckpointError(f"{str(path)!r} is not a classifier checkpoint (it holds {sorted(state)}; a classifier "
                              f"checkpoint has kind={KIND!r}, architecture, weights and info)")
    info = state["info"]
    if state["weights"] is None:
        return None, info
    model = Classifier(**{**state["architecture"], "shape": tuple(state["architecture"]["shape"])})
    try:
        model.load_state_dict(state["weights"])
    except RuntimeError as err:
        raise CheckpointError(f"classifier checkpoint {str(path)!r} does not fit its own architecture: "
                              f"{str(err).splitlines()[0]}") from None
    return model.to(device).eval().requires_grad_(False), info
