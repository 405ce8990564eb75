"""Inception FID, KID and IS (Heusel et al. 2017; Binkowski et al. 2018; Salimans et al. 2016)
of 8-bit RGB images, computed by torch-fidelity from Inception-v3 weights the user supplies.
Nothing is downloaded: the weights file is a path (params key ``quality.inception_weights``).

Why torch-fidelity and not torchmetrics: torchmetrics' FID, KID and IS wrap this same network
(torch-fidelity's ``FeatureExtractorInceptionV3``), but by default resize with torch's
antialiased bilinear instead of TensorFlow 1.x's (so its FIDs are not the published ones), draw
the KID and IS subsets from torch's global random state, and run the network once per metric.
torch-fidelity resizes as the reference TensorFlow code does, takes its subsets from a seed, and
computes each metric from features, so the network runs once per image set for all three.

The weights are torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (the TensorFlow
FID network, converted; URL in ``WEIGHTS_URL``). Given a path, torch-fidelity only
``torch.load``s it (its download runs when the path is None, which never reaches it here: an
empty path is refused first). The file is first read with ``weights_only=True`` and checked, so
the library's own full unpickling of it runs no code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpm import seeding
from ddpm.errors import EvaluationError, UserError
from ddpm.metrics._features import Estimate
from ddpm.metrics.floor import metric_floor
from ddpm.progress import OnStep

WEIGHTS_KEY = "quality.inception_weights"
# torch-fidelity's URL_INCEPTION_V3 (tests/quality/test_inception.py checks they agree). torch-fidelity is
# imported where a network is built or a metric computed: it imports torchvision, which imports
# torch._dynamo, a start-up that every stage importing ddpm.quality.suites would otherwise pay
# (benchmarks/README.md, "Imports deferred to first use", has the figure).
WEIGHTS_URL: str = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                    "weights-inception-2015-12-05-6726825d.pth")
WEIGHTS_FILE = WEIGHTS_URL.rsplit("/", 1)[-1]

# torch-fidelity's names: the network in its registry, the pool features of FID and KID, and
# the logits without the final bias, which its IS (like the reference TensorFlow IS) uses.
_NETWORK, _POOL, _LOGITS = "inception-v3-compat", "2048", "logits_unbiased"

Images = torch.Tensor  # uint8 [N, 3, H, W], values 0..255


class InceptionWeightsError(UserError, ValueError):
    """The Inception weights file (``quality.inception_weights``) is missing, unreadable, or
    not torch-fidelity's Inception-v3 weights."""


@dataclass(frozen=True)
class InceptionFeatures:
    """Inception-v3 outputs of a set of images: ``pool`` [N, 2048] (FID and KID) and ``logits``
    [N, 1008] (IS), float32 on the CPU. Indexing selects images, as for a tensor."""

    pool: torch.Tensor
    logits: torch.Tensor

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, index: Any) -> InceptionFeatures:
        return InceptionFeatures(self.pool[index], self.logits[index])


def _weights_error(value: str, problem: str) -> InceptionWeightsError:
    return InceptionWeightsError(
        f"{WEIGHTS_KEY}={value!r}: {problem}; expected torch-fidelity's Inception-v3 weights {WEIGHTS_FILE} "
        f"(download it on a machine with internet from {WEIGHTS_URL})")


def _read_weights(weights_path: str | os.PathLike[str] | None) -> Path:
    """The path of a readable file holding a state dict of finite tensors."""
    value = "" if weights_path is None else str(weights_path).strip()
    if not value:
        raise _weights_error(value, "no path given")
    path = Path(value).expanduser()
    if not path.is_file():
        raise _weights_error(value, "no such file" if not path.exists() else "not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # torch.load raises whatever its unpickler meets in a file that is not a torch save
    # (RuntimeError, UnpicklingError, EOFError, KeyError, ...): all mean "not weights".
    except Exception as err:
        raise _weights_error(value, f"cannot be read as a PyTorch weights file, truncated or not saved by "
                                    f"torch.save ({type(err).__name__})") from err
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _weights_error(value, f"holds a {type(state).__name__}, not a state dict of tensors")
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise _weights_error(value, "holds NaN or infinite weights")
    return path


def _load_network(weights_path: str | os.PathLike[str] | None, device: torch.device | str
                  ) -> torch.nn.Module:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = _read_weights(weights_path)
    try:
        network = FeatureExtractorInceptionV3(_NETWORK, [_POOL, _LOGITS], feature_extractor_weights_path=str(path))
    except RuntimeError as err:  # load_state_dict(strict=True): tensor names or shapes differ
        detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        detail = detail if len(detail) <= 120 else detail[:117] + "..."
        raise _weights_error(str(weights_path).strip(), f"does not fit the Inception-v3 network ({detail})") from err
    return network.to(device)


def check_inception_weights(path: str | os.PathLike[str]) -> Path:
    """``path`` if it holds Inception-v3 weights that torch-fidelity's network loads (checked
    by loading them); otherwise ``InceptionWeightsError``, one line naming the params key, the
    path and where the file comes from. Meant to run before any long work."""
    _load_network(path, "cpu")
    return Path(str(path).strip()).expanduser()


def _check_images(images: Any, name: str) -> None:
    if isinstance(images, InceptionFeatures):
        return
    if (not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4
            or images.shape[1] != 3 or len(images) == 0):
        got = (f"dtype {images.dtype} and shape {tuple(images.shape)}" if isinstance(images, torch.Tensor)
               else type(images).__name__)
        raise ValueError(f"{name} must be 8-bit RGB images for Inception: a non-empty uint8 tensor "
                         f"[N, 3, H, W] (values 0..255; grey images are not accepted), got {got}")


def _extract(network: torch.nn.Module, images: Images, batch_size: int, device: torch.device | str,
             on_step: OnStep | None, done: int, total: int) -> InceptionFeatures:
    """Features of ``images`` in batches; ``on_step(done + images so far, total)`` after each."""
    pools, logits = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            pool, logit = network(images[start:start + batch_size].to(device))
            pools.append(pool.cpu())
            logits.append(logit.cpu())
            if on_step is not None:
                on_step(done + min(start + batch_size, len(images)), total)
    return InceptionFeatures(torch.cat(pools), torch.cat(logits))


def _features(sets: Sequence[Images | InceptionFeatures], weights_path: str | os.PathLike[str] | None,
              batch_size: int, device: torch.device | str, on_step: OnStep | None) -> list[InceptionFeatures]:
    """Each set's features: images through one network (loaded once), features as they are."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    to_run = [x for x in sets if not isinstance(x, InceptionFeatures)]
    network = _load_network(weights_path, device) if to_run else None
    total, done, out = sum(len(x) for x in to_run), 0, []
    for x in sets:
        if not isinstance(x, InceptionFeatures):
            x = _extract(network, x, batch_size, device, on_step, done, total)
            done += len(x)
        out.append(x)
    return out


def inception_features(images: Images, weights_path: str | os.PathLike[str], batch_size: int = 64,
                       device: torch.device | str = "cpu", on_step: OnStep | None = None) -> InceptionFeatures:
    """The Inception-v3 features of uint8 RGB ``images`` [N, 3, H, W] (any size: the network
    resizes to 299 x 299 as the reference TensorFlow code does), for reuse across calls of
    ``inception_metrics`` (e.g. one real set against several sample sets)."""
    _check_images(images, "images")
    return _features([images], weights_path, batch_size, device, on_step)[0]


def _library_seed(seed: int) -> int:
    """The seed of torch-fidelity's KID subsets and IS shuffle (a NumPy RandomState seed, so
    below 2**32), from the run's "metrics" stream."""
    return seeding.stream_seed(seed, "metrics") % 2**32


def _estimate(mean: float, population_std: float, draws: int) -> Estimate:
    """torch-fidelity reports np.std (ddof=0) over ``draws``; the standard error of their mean
    is the sample std / sqrt(draws) = population std / sqrt(draws - 1); NaN for a single draw
    (torch-fidelity's std is then 0, which no single draw can tell)."""
    return Estimate(float(mean), float(population_std) / math.sqrt(draws - 1) if draws > 1 else math.nan)


def _check_sizes(num_samples: int, num_real: int, kid_subset_size: int, kid_subsets: int, is_splits: int) -> None:
    if kid_subset_size < 2 or kid_subsets < 1 or is_splits < 1:
        raise ValueError(f"need kid_subset_size >= 2, kid_subsets >= 1 and is_splits >= 1, got "
                         f"{kid_subset_size}, {kid_subsets} and {is_splits}")
    if min(num_samples, num_real) < kid_subset_size:
        raise EvaluationError(
            f"Inception KID needs at least kid_subset_size={kid_subset_size} images in each set, got "
            f"{num_samples} samples and {num_real} real images; lower the subset size or draw more samples")
    if num_samples < is_splits:
        raise EvaluationError(f"the Inception Score needs at least is_splits={is_splits} samples (one per split), "
                              f"got {num_samples}; lower the splits or draw more samples")


def inception_metrics(
    samples: Images | InceptionFeatures, real: Images | InceptionFeatures,
    weights_path: str | os.PathLike[str] | None, kid_subset_size: int, kid_subsets: int, is_splits: int = 10,
    batch_size: int = 64, device: torch.device | str = "cpu", seed: int = 0, on_step: OnStep | None = None,
) -> dict[str, Any]:
    """FID, KID and IS of ``samples`` against ``real``, computed by torch-fidelity.

    ``samples`` and ``real`` are uint8 RGB images [N, 3, H, W] (run through the network of
    ``weights_path``) or ``InceptionFeatures`` already extracted (no weights needed then).
    Returns ``fid`` (float: sample mean and unbiased covariance of the pool features, as the
    reference code), ``kid`` (``Estimate``: the mean unbiased MMD^2 with the cubic polynomial
    kernel over ``kid_subsets`` subsets of ``kid_subset_size`` drawn independently, each without
    replacement, so subsets can share images at any number of subsets and the standard error
    then understates the data's sampling error) and ``inception_score`` (``Estimate``: the mean
    over ``is_splits`` disjoint splits of the shuffled samples and its standard error; the field's
    "IS +- std" quotes std = stderr * sqrt(is_splits - 1)); a single subset or split has a NaN
    standard error. KID subsets and the IS shuffle come from
    ``seed``'s "metrics" stream. ``on_step(done, total)`` counts images through the network.
    """
    _check_images(samples, "samples")
    _check_images(real, "real")
    _check_sizes(len(samples), len(real), kid_subset_size, kid_subsets, is_splits)
    sample_feats, real_feats = _features([samples, real], weights_path, batch_size, device, on_step)
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    rng_seed = _library_seed(seed)
    fid = fid_statistics_to_metric(fid_features_to_statistics(sample_feats.pool.cpu()),
                                   fid_features_to_statistics(real_feats.pool.cpu()), verbose=False)
    # The kernel of Binkowski et al. 2018, sec. 4: k(x, y) = (x.y / d + 1)^3.
    kid = kid_features_to_metric(sample_feats.pool.cpu(), real_feats.pool.cpu(), kid_subsets=kid_subsets,
                                 kid_subset_size=kid_subset_size, kid_kernel="poly", kid_kernel_poly_degree=3,
                                 kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, rng_seed=rng_seed,
                                 verbose=False)
    isc = isc_features_to_metric(sample_feats.logits.cpu(), splits=is_splits, shuffle=True, rng_seed=rng_seed)
    return {
        "fid": float(fid[KEY_METRIC_FID]),
        "kid": _estimate(kid[KEY_METRIC_KID_MEAN], kid[KEY_METRIC_KID_STD], kid_subsets),
        "inception_score": _estimate(isc[KEY_METRIC_ISC_MEAN], isc[KEY_METRIC_ISC_STD], is_splits),
    }


def inception_metric_floor(
    real: Images | InceptionFeatures, n: int, weights_path: str | os.PathLike[str] | None, kid_subset_size: int,
    kid_subsets: int, is_splits: int = 10, batch_size: int = 64, device: torch.device | str = "cpu",
    seed: int = 0, on_step: OnStep | None = None,
) -> dict[str, Any]:
    """The floor of ``inception_metrics`` at ``n`` samples: the same metrics between two
    disjoint random subsets of ``n`` real images, the subsets of ``ddpm.metrics.metric_floor``
    (so a seed picks the same rows as every other floor); IS is that of the first subset, the
    score of real images at this size. Only the 2n chosen images run through the network."""
    _check_images(real, "real")

    def between(first: torch.Tensor, second: torch.Tensor) -> dict[str, Any]:
        return inception_metrics(real[first], real[second], weights_path, kid_subset_size, kid_subsets, is_splits,
                                 batch_size, device, seed, on_step)

    return metric_floor(between, torch.arange(len(real)), n, seed=seed)


__all__ = [
    "WEIGHTS_KEY", "WEIGHTS_URL", "InceptionFeatures", "InceptionWeightsError", "check_inception_weights",
    "inception_features", "inception_metric_floor", "inception_metrics",
]
