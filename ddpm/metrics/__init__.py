"""Sample-quality metrics on feature arrays, offline: pure functions of [N, D] arrays (torch
or numpy, computed in float64), each citing its paper. The features come from the caller (a
classifier the pipeline trains, Inception weights the user supplies, or the raw 2-D samples),
and the caller names each result after them.

- ``frechet_distance``, ``frechet_from_moments``: Heusel et al. 2017
- ``kid``: Binkowski et al. 2018 (with ``mmd2_unbiased``, ``polynomial_kernel``)
- ``precision_recall``: Kynkaanniemi et al. 2019; ``density_coverage``: Naeem et al. 2020
- ``label_distribution``: mode coverage through a classifier's labels
- ``energy_distance``, ``sliced_wasserstein``: low-dimensional continuous data
- ``metric_floor``: any of them between two independent draws of real data
- ``inception_metrics``, ``inception_metric_floor``: FID, KID and IS of 8-bit RGB images
  through torch-fidelity, from Inception weights the user supplies (``check_inception_weights``)
"""

from ddpm.metrics._features import Estimate
from ddpm.metrics.continuous import energy_distance, sliced_wasserstein
from ddpm.metrics.floor import metric_floor
from ddpm.metrics.frechet import frechet_distance, frechet_from_moments
from ddpm.metrics.inception import (
    InceptionFeatures,
    InceptionWeightsError,
    check_inception_weights,
    inception_features,
    inception_metric_floor,
    inception_metrics,
)
from ddpm.metrics.kid import kid, mmd2_unbiased, polynomial_kernel
from ddpm.metrics.labels import LabelDistribution, label_distribution, label_histogram
from ddpm.metrics.manifold import DensityCoverage, PrecisionRecall, density_coverage, knn_radii, precision_recall

__all__ = [
    "DensityCoverage",
    "Estimate",
    "InceptionFeatures",
    "InceptionWeightsError",
    "LabelDistribution",
    "PrecisionRecall",
    "check_inception_weights",
    "density_coverage",
    "energy_distance",
    "frechet_distance",
    "frechet_from_moments",
    "inception_features",
    "inception_metric_floor",
    "inception_metrics",
    "kid",
    "knn_radii",
    "label_distribution",
    "label_histogram",
    "metric_floor",
    "mmd2_unbiased",
    "polynomial_kernel",
    "precision_recall",
    "sliced_wasserstein",
]
