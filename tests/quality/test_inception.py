"""Inception FID, KID and IS (ddpm.metrics.inception) against independent computations.

The real Inception weights cannot be downloaded here, so the tests save a weights file of the
same architecture with seeded random weights: torch-fidelity's own network, initialised and
never trained, saved as the state dict the library loads. Its features are meaningless as
image statistics but exercise every step from images to metrics, and each metric of them is
compared with ddpm.metrics or a direct formula (scipy) on the same features. Tolerances are
rounding bounds computed from the data (float32 where torch-fidelity works in float32).

The network is slow on a CPU (299 x 299 inputs), so it runs once per module on 8 tiny images;
the formula checks beyond that use small synthetic feature arrays.
"""

import math
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as fidelity_inception
from scipy import stats
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from ddpm.errors import EvaluationError, UserError
from ddpm.metrics import Estimate, frechet_distance, frechet_from_moments, metric_floor, mmd2_unbiased
from ddpm.metrics import inception as inc
from ddpm.metrics.inception import (
    WEIGHTS_KEY,
    WEIGHTS_URL,
    InceptionFeatures,
    InceptionWeightsError,
    check_inception_weights,
    inception_features,
    inception_metric_floor,
    inception_metrics,
)

U32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff of float32
U64 = float(np.finfo(np.float64).eps) / 2


class _Untrained(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception-v3 with loading skipped, so its initial weights stay."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return None


def save_random_inception_weights(path, seed: int = 0) -> None:
    empty = path.with_name(path.name + ".empty")
    torch.save({}, empty)
    network = _Untrained("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            if p.ndim == 4:  # He initialisation keeps activations O(1) through the ReLU stack
                p.normal_(0, math.sqrt(2 / p[0].numel()), generator=g)
            elif name.startswith("fc."):
                p.normal_(0, 1 / math.sqrt(p.shape[-1]), generator=g)
    torch.save(network.state_dict(), path)


def forbid_network(mp: pytest.MonkeyPatch) -> None:
    """Any download or connection attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(urllib.request, "urlopen", refuse)
    mp.setattr(torch.hub, "load_state_dict_from_url", refuse)
    mp.setattr(torch.hub, "download_url_to_file", refuse)
    mp.setattr(fidelity_inception, "load_state_dict_from_url", refuse)  # the name torch-fidelity calls


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    save_random_inception_weights(path)
    return path


@pytest.fixture(scope="module")
def images():
    """4 sample and 4 real 4x4 RGB images (the network resizes them to 299 x 299)."""
    g = torch.Generator().manual_seed(1)
    both = torch.randint(0, 256, (8, 3, 4, 4), generator=g, dtype=torch.uint8)
    return both[:4], both[4:]


@pytest.fixture(scope="module")
def run(weights, images):
    """Features of each image set, and the metrics of the images, with all downloads refused.
    KID subsets of all 4 images and IS in one split make both independent of the draws."""
    samples, real = images
    with pytest.MonkeyPatch.context() as mp:
        forbid_network(mp)
        feats = inception_features(samples, weights), inception_features(real, weights)
        result = inception_metrics(samples, real, weights, kid_subset_size=4, kid_subsets=3, is_splits=1)
    return feats, result


# --- rounding bounds ------------------------------------------------------------------------


def fid_rounding_bound(a: torch.Tensor, b: torch.Tensor) -> float:
    """How far torch-fidelity's FID and ``frechet_distance`` may differ by rounding alone.

    - torch-fidelity takes the means of float32 features in float32: each component of
      mu_a - mu_b is off by at most (N_a mean|a| + N_b mean|b|) u32, which moves ||mu_a - mu_b||^2
      by at most 2 |d| |e| + |e|^2; it squares the difference in float32 too (a dot product of
      D terms: D u32 of the result).
    - Both take square roots of the eigenvalues of S_a S_b (or of a similar symmetric matrix)
      in float64. A backward-stable eigensolver returns each within D u64 ||S_a|| ||S_b|| (the
      Frobenius norms bound the spectral ones); a square root then moves by at most the root of
      that (eigenvalues that are 0 in exact arithmetic: D - rank of them) or that over
      2 sqrt(lambda). The trace of the root enters FID twice, in each of the two computations.
    """
    a, b = a.double(), b.double()
    d = a.shape[1]
    e = (len(a) * a.abs().mean(0) + len(b) * b.abs().mean(0)) * U32
    diff = (a.mean(0) - b.mean(0)).norm() + e.norm()
    mean_term = 2 * (a.mean(0) - b.mean(0)).norm() * e.norm() + e.norm() ** 2 + d * U32 * diff**2
    ca, cb = a - a.mean(0), b - b.mean(0)
    cov_norm_a = (ca.T @ ca).norm() / (len(a) - 1)
    cov_norm_b = (cb.T @ cb).norm() / (len(b) - 1)
    noise = d * U64 * cov_norm_a * cov_norm_b
    # The nonzero eigenvalues of S_a S_b are those of the small PSD matrix M M^T, M = cb ca^T / c.
    m = cb @ ca.T / math.sqrt((len(a) - 1) * (len(b) - 1))
    lams = torch.linalg.eigvalsh(m @ m.T).clamp(min=0).flip(0)[:d]
    lams = torch.cat([lams, torch.zeros(d - len(lams), dtype=lams.dtype)])
    per_root = torch.where(lams > noise, noise / (2 * lams.sqrt().clamp(min=1e-300)), noise.sqrt())
    trace_terms = 4 * d * U64 * (ca.square().sum() / (len(a) - 1) + cb.square().sum() / (len(b) - 1))
    return float(mean_term + 2 * 2 * per_root.sum() + trace_terms)


def mmd_float32_bound(x: torch.Tensor, y: torch.Tensor) -> float:
    """How far torch-fidelity's float32 MMD^2 of subsets ``x``, ``y`` may be from float64's.

    Kernel k = (x.y / d + 1)^3: a float32 dot product of d terms errs by at most d u32 |x| |y|,
    the scaling and the +1 add 2 u32 of it; the cube multiplies that by 3 t^2 and rounds twice.
    The row and total sums of s^2 kernel values in float32 err by at most s^2 u32 k_max each,
    and the three kernel means enter MMD^2 with weights 1, 1 and 2.
    """
    d, s = x.shape[1], len(x)
    r2 = float(max(x.double().norm(dim=1).max(), y.double().norm(dim=1).max())) ** 2
    t_max = r2 / d + 1
    kernel_err = 3 * t_max**2 * (d + 2) * U32 * r2 / d + 2 * U32 * t_max**3
    return 4 * (kernel_err + 2 * s * s * U32 * t_max**3)


def direct_inception_score(logits: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) (Salimans et al. 2016), by scipy."""
    p = torch.softmax(logits.double(), dim=1).numpy()
    marginal = p.mean(0)
    return math.exp(np.mean([stats.entropy(row, marginal) for row in p]))


def is_rounding_bound(logits: torch.Tensor) -> float:
    """Relative rounding bound of IS in float64: each KL term p_k (log p_k - log q_k) carries at
    most 4 C u64 (1 + |log p_k| + |log q_k|) p_k of error (softmax of C terms, logs, products),
    and p sums to 1; the mean and exp keep the bound relative. Two computations: twice."""
    log_p = torch.log_softmax(logits.double(), dim=1)
    log_q = log_p.exp().mean(0).log()
    c = logits.shape[1]
    return 2 * 4 * c * U64 * (1 + float(log_p.abs().max() + log_q.abs().max()))


# --- the network, offline ---------------------------------------------------------------------


def test_forbid_network_catches_the_library_download(weights):
    # The guard below replaces the function torch-fidelity downloads with: without a path it
    # would be called, so every test that passes under the guard shows no download happened.
    with pytest.MonkeyPatch.context() as mp:
        forbid_network(mp)
        with pytest.raises(AssertionError, match="network access attempted"):
            FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])


def test_features_of_images(run):
    (sample_feats, real_feats), _ = run
    for feats in (sample_feats, real_feats):
        assert feats.pool.shape == (4, 2048) and feats.logits.shape == (4, 1008)
        assert feats.pool.dtype == torch.float32 and torch.isfinite(feats.pool).all()
    # Distinct images, distinct features: the comparisons below are not of constants.
    assert torch.cdist(sample_feats.pool, real_feats.pool).min() > 0


def test_fid_of_images_equals_frechet_distance_of_their_features(run):
    (sample_feats, real_feats), result = run
    expected = frechet_distance(sample_feats.pool, real_feats.pool)
    assert expected > 0
    assert abs(result["fid"] - expected) <= fid_rounding_bound(sample_feats.pool, real_feats.pool)


def test_kid_of_images_equals_unbiased_mmd_of_their_features(run):
    # With subsets of all 4 images every subset is the whole set, and the U-statistic does not
    # depend on the order: KID = MMD^2 of the sets, the same for all 3 subsets.
    (sample_feats, real_feats), result = run
    expected = mmd2_unbiased(sample_feats.pool.double(), real_feats.pool.double()).item()
    bound = mmd_float32_bound(sample_feats.pool, real_feats.pool)
    assert isinstance(result["kid"], Estimate)
    assert abs(result["kid"].value - expected) <= bound
    assert result["kid"].stderr <= bound


def test_inception_score_of_images_equals_direct_formula(run):
    (sample_feats, _), result = run
    expected = direct_inception_score(sample_feats.logits)
    assert result["inception_score"].value == pytest.approx(expected, rel=is_rounding_bound(sample_feats.logits))
    assert math.isnan(result["inception_score"].stderr)  # one split: no standard error to give


def test_fid_of_real_images_with_themselves_is_zero(run):
    (_, real_feats), _ = run
    result = inception_metrics(real_feats, real_feats, None, kid_subset_size=4, kid_subsets=1, is_splits=1)
    assert abs(result["fid"]) <= fid_rounding_bound(real_feats.pool, real_feats.pool)


# --- the formulas, on small synthetic features --------------------------------------------------


def synthetic(seed: int, n: int, d: int, shift: float = 0.0) -> InceptionFeatures:
    g = torch.Generator().manual_seed(seed)
    pool = (torch.randn(n, d, generator=g, dtype=torch.float64) + shift).float()
    logits = (2 * torch.randn(n, 10, generator=g, dtype=torch.float64)).float()
    return InceptionFeatures(pool, logits)


def test_a_single_kid_subset_or_is_split_has_a_nan_standard_error():
    """torch-fidelity reports a std of 0 over one subset; one estimate has no standard error."""
    result = inception_metrics(synthetic(1, 8, 3), synthetic(2, 8, 3), None, kid_subset_size=8, kid_subsets=1,
                               is_splits=1)
    assert math.isfinite(result["kid"].value) and math.isnan(result["kid"].stderr)
    assert math.isfinite(result["inception_score"].value) and math.isnan(result["inception_score"].stderr)


def test_fid_equals_frechet_distance_with_full_rank_covariances():
    a, b = synthetic(0, 40, 6), synthetic(1, 30, 6, shift=0.5)
    result = inception_metrics(a, b, None, kid_subset_size=10, kid_subsets=2, is_splits=2)
    expected = frechet_distance(a.pool, b.pool)
    bound = fid_rounding_bound(a.pool, b.pool)
    assert abs(result["fid"] - expected) <= bound
    # Not a vacuous bound: covariances normalised by N instead of N - 1 would fall outside it.
    pa, pb = a.pool.double(), b.pool.double()
    biased = frechet_from_moments(pa.mean(0), torch.cov(pa.T, correction=0), pb.mean(0), torch.cov(pb.T, correction=0))
    assert abs(biased - expected) > 100 * bound


def test_kid_is_the_mean_mmd_over_seeded_subsets_with_its_stderr():
    a, b = synthetic(2, 30, 5), synthetic(3, 25, 5, shift=0.3)
    size, subsets, seed = 10, 6, 4
    result = inception_metrics(a, b, None, kid_subset_size=size, kid_subsets=subsets, is_splits=1, seed=seed)
    # torch-fidelity draws each pair of subsets without replacement from one RandomState.
    rs = np.random.RandomState(inc._library_seed(seed))
    mmds, bound = [], 0.0
    for _ in range(subsets):
        x, y = a.pool[rs.choice(len(a), size, replace=False)], b.pool[rs.choice(len(b), size, replace=False)]
        mmds.append(mmd2_unbiased(x.double(), y.double()).item())
        bound = max(bound, mmd_float32_bound(x, y))
    assert abs(result["kid"].value - np.mean(mmds)) <= bound
    stderr = np.std(mmds, ddof=1) / math.sqrt(subsets)
    assert abs(result["kid"].stderr - stderr) <= bound / math.sqrt(subsets - 1)
    assert result["kid"].stderr > 10 * bound  # the subsets differ, so the check above means something


def test_inception_score_is_the_mean_over_shuffled_splits_with_its_stderr():
    a, b = synthetic(4, 30, 3), synthetic(5, 30, 3)
    splits, seed = 3, 7
    result = inception_metrics(a, b, None, kid_subset_size=5, kid_subsets=1, is_splits=splits, seed=seed)
    order = torch.from_numpy(np.random.RandomState(inc._library_seed(seed)).permutation(len(a)))
    scores = [direct_inception_score(chunk) for chunk in a.logits[order].chunk(splits)]
    rel = is_rounding_bound(a.logits)
    assert result["inception_score"].value == pytest.approx(np.mean(scores), rel=rel)
    stderr = np.std(scores, ddof=1) / math.sqrt(splits)
    # Each split's score is within rel * score; the std of the errors is at most their maximum.
    assert abs(result["inception_score"].stderr - stderr) <= 2 * rel * max(scores) / math.sqrt(splits - 1)
    assert result["inception_score"].value > 1.5  # logits with spread: a score well above 1


def test_inception_score_of_identical_logits_is_one():
    # p(y|x) = p(y) for every x: every KL is 0. The marginal, a float64 mean of N equal rows,
    # is within N u64 of each row, so each log ratio is within (N + 1) u64, and the sum over C
    # classes adds C u64 of rounding: IS - 1 is within (N + C + 1) u64 (times exp's ~1).
    row = synthetic(6, 1, 3).logits
    feats = InceptionFeatures(torch.zeros(12, 3), row.expand(12, -1).clone())
    result = inception_metrics(feats, synthetic(7, 12, 3), None, kid_subset_size=4, kid_subsets=1, is_splits=2)
    assert abs(result["inception_score"].value - 1) <= (12 + 10 + 1) * U64 * 2


# --- the floor ---------------------------------------------------------------------------------


def test_floor_scores_two_disjoint_subsets_of_the_real_features(monkeypatch):
    real = synthetic(8, 30, 4)
    calls = []
    scored = inc.inception_metrics

    def spy(a, b, *args, **kwargs):
        calls.append((a, b))
        return scored(a, b, *args, **kwargs)

    monkeypatch.setattr(inc, "inception_metrics", spy)
    floor = inception_metric_floor(real, 12, None, kid_subset_size=6, kid_subsets=2, is_splits=2, seed=3)
    (first, second), = calls
    assert len(first) == len(second) == 12
    rows = {tuple(r.tolist()) for r in real.pool}
    a_rows, b_rows = ({tuple(r.tolist()) for r in x.pool} for x in (first, second))
    assert a_rows <= rows and b_rows <= rows and not a_rows & b_rows
    # The subsets of metric_floor with this seed, so every floor of a run uses the same rows.
    index = metric_floor(lambda i, j: (i, j), torch.arange(len(real)), 12, seed=3)
    assert torch.equal(first.pool, real.pool[index[0]]) and torch.equal(second.pool, real.pool[index[1]])
    assert floor == scored(first, second, None, kid_subset_size=6, kid_subsets=2, is_splits=2, seed=3)


def test_floor_of_images_sends_only_the_chosen_images_to_the_metrics(monkeypatch, images):
    real = torch.cat(images)  # 8 distinct images
    calls = []
    monkeypatch.setattr(inc, "inception_metrics", lambda a, b, *args, **kwargs: calls.append((a, b)) or {})
    inception_metric_floor(real, 3, "unused.pth", kid_subset_size=2, kid_subsets=1, is_splits=1)
    (first, second), = calls
    assert first.shape == second.shape == (3, 3, 4, 4) and first.dtype == torch.uint8
    index = {i for x in (first, second) for i in range(len(real)) for r in x if torch.equal(r, real[i])}
    assert len(index) == 6  # six different real images: disjoint subsets


def test_floor_needs_two_disjoint_subsets():
    with pytest.raises(EvaluationError, match="2n=20"):
        inception_metric_floor(synthetic(9, 15, 3), 10, None, kid_subset_size=5, kid_subsets=1, is_splits=1)


# --- bad input ---------------------------------------------------------------------------------


def _write_bad_weights(kind: str, tmp_path, weights) -> str:
    path = tmp_path / "weights.pth"
    if kind == "missing":
        return str(path)
    if kind == "empty path":
        return ""
    if kind == "directory":
        return str(tmp_path)
    if kind == "random .pt":
        torch.save({"layer.weight": torch.randn(3, 3)}, path)
    elif kind == "truncated":
        data = weights.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("not weights\n")
    elif kind == "list":
        torch.save([torch.zeros(2)], path)
    elif kind == "nan":
        torch.save({"fc.weight": torch.full((2, 2), float("nan"))}, path)
    return str(path)


@pytest.mark.parametrize("kind", ["missing", "empty path", "directory", "random .pt", "truncated", "text", "list",
                                  "nan"])
def test_bad_weights_file_is_one_clear_error(kind, tmp_path, weights):
    value = _write_bad_weights(kind, tmp_path, weights)
    with pytest.MonkeyPatch.context() as mp:
        forbid_network(mp)
        with pytest.raises(InceptionWeightsError) as info:
            check_inception_weights(value)
    message = str(info.value)
    assert "\n" not in message
    assert WEIGHTS_KEY in message and repr(value) in message and WEIGHTS_URL in message
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_metrics_of_images_without_weights_refuse_before_any_download(images):
    with pytest.MonkeyPatch.context() as mp:
        forbid_network(mp)
        for value in (None, "", "/no/such/inception.pth"):
            with pytest.raises(InceptionWeightsError, match=WEIGHTS_KEY):
                inception_metrics(*images, value, kid_subset_size=2, kid_subsets=1, is_splits=1)


def test_check_inception_weights_accepts_the_network_weights(weights):
    with pytest.MonkeyPatch.context() as mp:
        forbid_network(mp)
        assert check_inception_weights(str(weights)) == weights


@pytest.mark.parametrize("bad", [
    torch.zeros(2, 1, 8, 8, dtype=torch.uint8),   # grey
    torch.zeros(2, 3, 8, 8),                      # float
    torch.zeros(3, 8, 8, dtype=torch.uint8),      # one image without a batch dimension
    torch.zeros(0, 3, 8, 8, dtype=torch.uint8),   # none
])
def test_images_must_be_a_batch_of_uint8_rgb(bad, images):
    for samples, real in ((bad, images[1]), (images[0], bad)):
        with pytest.raises(ValueError, match=r"uint8 tensor \[N, 3, H, W\]"):
            inception_metrics(samples, real, "unused.pth", kid_subset_size=2, kid_subsets=1, is_splits=1)


def test_too_few_samples_for_kid_subsets_names_the_sizes():
    with pytest.raises(EvaluationError, match=r"kid_subset_size=8 .* 6 samples and 20 real images"):
        inception_metrics(synthetic(10, 6, 3), synthetic(11, 20, 3), None, kid_subset_size=8, kid_subsets=1,
                          is_splits=1)
    with pytest.raises(EvaluationError, match=r"is_splits=10 .* got 6"):
        inception_metrics(synthetic(10, 6, 3), synthetic(11, 20, 3), None, kid_subset_size=4, kid_subsets=1)


def test_weights_url_is_torch_fidelitys():
    assert WEIGHTS_URL == fidelity_inception.URL_INCEPTION_V3


def test_stages_that_need_no_inception_do_not_import_torch_fidelity():
    """torch-fidelity imports torchvision and torch._dynamo (seconds of start-up per stage):
    the plot and quality stages import it only when an Inception metric is computed."""
    code = ("import sys, stages.plot, stages.quality, stages.evaluate, stages.sample; "
            "print(sorted(m for m in ('torch_fidelity', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "[]"
