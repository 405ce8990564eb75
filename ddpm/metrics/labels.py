"""Mode coverage through a classifier's labels: how the generated samples spread over the
classes, compared with the real data's spread."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddpm.metrics._features import Features


@dataclass(frozen=True)
class LabelDistribution:
    """``histogram[c]``: the fraction of samples labelled c; ``classes_covered``: how many
    classes got at least one sample; ``tv_distance``: the total-variation distance to the
    reference histogram (None without a reference)."""

    histogram: tuple[float, ...]
    classes_covered: int
    tv_distance: float | None


def label_histogram(labels_or_probs: Features, num_classes: int) -> torch.Tensor:
    """The fraction of samples per class, from integer labels [N] or class scores [N, C]
    (probabilities or logits; each sample counts for its arg-max class)."""
    x = torch.as_tensor(labels_or_probs)
    if x.ndim == 2:
        if x.shape[1] != num_classes:
            raise ValueError(f"class scores have {x.shape[1]} columns, expected num_classes={num_classes}")
        x = x.argmax(dim=1)
    if x.ndim != 1 or x.numel() == 0 or x.is_floating_point():
        raise ValueError(f"expected integer labels [N] or class scores [N, C], got {x.dtype} of shape {tuple(x.shape)}")
    if x.min() < 0 or x.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {x.min().item()}..{x.max().item()}")
    return torch.bincount(x.cpu(), minlength=num_classes).to(torch.float64) / x.numel()


def label_distribution(
    labels_or_probs: Features, num_classes: int, reference: Features | None = None
) -> LabelDistribution:
    """The label histogram of the samples, its number of covered classes, and its
    total-variation distance TV(p, q) = 1/2 sum_c |p_c - q_c| to the histogram of the
    ``reference`` labels or scores (the real data).

    Total variation rather than KL: a dropped mode (p_c = 0 where q_c > 0) makes KL(q || p)
    infinite, and KL(p || q) ignores it, while TV counts it as the mass q_c it lost; TV is also
    symmetric and lies in [0, 1].
    """
    hist = label_histogram(labels_or_probs, num_classes)
    tv = None
    if reference is not None:
        tv = 0.5 * (hist - label_histogram(reference, num_classes)).abs().sum().item()
    return LabelDistribution(
        histogram=tuple(hist.tolist()), classes_covered=int((hist > 0).sum()), tv_distance=tv
    )
