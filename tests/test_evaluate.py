"""The end-of-run linear evaluation: the probe itself, the multi-init random baseline, the gain."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch
from torch import nn

from sptrack.errors import ConfigError
from sptrack.recipe import Experiment
from sptrack.recipe.evaluate import TOLERANCE, fit_linear_probe, fit_logistic_regression, linear_probe_accuracy, random_init_baseline
from sptrack.recipe.final_eval import final_linear_eval


def _blobs(n: int, seed: int) -> list[dict]:
    """Three Gaussian classes in 8-D, far apart along the first axes; batches of 32."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randn(n, 8, generator=g) + 6.0 * nn.functional.one_hot(labels, 8).float()
    return [{"image": images[i:i + 32], "label": labels[i:i + 32]} for i in range(0, n, 32)]


TRAIN, VAL = _blobs(300, 0), _blobs(150, 1)
EMBED = lambda encoder, x: encoder(x)  # noqa: E731


def _factory() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 4), nn.Tanh())


def test_probe_separates_separable_classes_and_not_random_labels():
    x = torch.cat([b["image"] for b in TRAIN])
    y = torch.cat([b["label"] for b in TRAIN])
    vx = torch.cat([b["image"] for b in VAL])
    vy = torch.cat([b["label"] for b in VAL])
    assert fit_linear_probe(x, y, vx, vy) == 1.0
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    assert fit_linear_probe(x, shuffled, vx, vy) < 0.5  # chance is 1/3: labels unrelated to x are not learnt


def test_probe_is_scored_on_the_held_out_split_only():
    """Held-out labels rotated (0->1->2->0): a probe perfect on its training split scores exactly 0 there."""
    x, y = torch.cat([b["image"] for b in TRAIN]), torch.cat([b["label"] for b in TRAIN])
    vx, vy = torch.cat([b["image"] for b in VAL]), torch.cat([b["label"] for b in VAL])
    assert fit_linear_probe(x, y, x, y) == 1.0
    assert fit_linear_probe(x, y, vx, (vy + 1) % 3) == 0.0


def test_probe_standardises_features_so_their_scale_does_not_matter():
    """The class lives in a feature of scale 1e-4 beside noise of scale 1e3: standardised, the L2 penalty does not
    drown it, and rescaling any feature leaves the accuracy unchanged."""
    x, y = torch.cat([b["image"] for b in TRAIN]), torch.cat([b["label"] for b in TRAIN])
    vx, vy = torch.cat([b["image"] for b in VAL]), torch.cat([b["label"] for b in VAL])
    scale = torch.tensor([1e-4, 1e-4, 1e-4, 1e3, 1e3, 1e3, 1e3, 1e3])
    assert fit_linear_probe(x * scale, y, vx * scale, vy) == fit_linear_probe(x, y, vx, vy) == 1.0


def _objective_and_grad(x: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.ndarray, weight_decay: float):
    """The probe's objective, mean CE + weight_decay * ||W||^2, and its gradient, written out in numpy."""
    logits = x @ weight + bias
    top = logits.max(1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(1))
    objective = np.mean(log_z - logits[np.arange(len(y)), y]) + weight_decay * np.sum(weight**2)
    residual = np.exp(logits - log_z[:, None])
    residual[np.arange(len(y)), y] -= 1.0
    return objective, x.T @ residual / len(y) + 2 * weight_decay * weight, residual.mean(0)


def _standardise(x: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """As the probe does: by the first split's mean and sample std (ddof=1)."""
    mean, std = x.mean(0), x.std(0, ddof=1)
    return [(a - mean) / std for a in (x, *others)]


def _overlapping_gaussians(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four Gaussian classes in 12-D whose means differ by about 0.6 sd per feature, on features of mixed scale and offset:
    not separable, so the optimum is finite and interior."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(scale=0.4, size=(4, 12))
    y = rng.integers(0, 4, n)
    x = rng.normal(size=(n, 12)) + means[y]
    return x * np.linspace(0.1, 10, 12) + 3.0, y


def _ill_conditioned(n: int = 1000, d: int = 96, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised features whose spectrum spans 1 .. 1e-4 (rotated, so standardising does not undo it) and labels
    that depend on every direction: as on random-init embeddings, L-BFGS needs a few hundred iterations (262)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (z @ torch.randn(d, classes, generator=g, dtype=torch.float64) + torch.randn(n, classes, generator=g, dtype=torch.float64)).argmax(1)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    x = (z * torch.logspace(0, -4, d, dtype=torch.float64)) @ rotation
    return (x - x.mean(0)) / x.std(0), y


@pytest.mark.parametrize("weight_decay", [1e-4, 1e-2])
def test_probe_matches_sklearn_on_the_same_objective(weight_decay):
    """sklearn's multinomial lbfgs minimises C * sum_i CE_i + ||W||^2 / 2 (intercept unpenalised): the probe's
    objective times 1 / (2 * weight_decay) when C = 1 / (2 * n * weight_decay)."""
    from sklearn.linear_model import LogisticRegression

    raw_x, y = _overlapping_gaussians(400, seed=0)
    raw_vx, vy = _overlapping_gaussians(200, seed=1)
    x, vx = _standardise(raw_x, raw_vx)
    ref = LogisticRegression(C=1 / (2 * len(y) * weight_decay), tol=1e-10, max_iter=100_000).fit(x, y)
    ref_w, ref_b = ref.coef_.T, ref.intercept_
    ref_objective, ref_gw, ref_gb = _objective_and_grad(x, y, ref_w, ref_b, weight_decay)
    assert max(np.abs(ref_gw).max(), np.abs(ref_gb).max()) < TOLERANCE / 10  # the reference is the tighter solve

    fit = fit_logistic_regression(torch.from_numpy(x), torch.from_numpy(y), weight_decay)
    assert fit.converged and fit.grad_norm <= TOLERANCE
    w, b = fit.weight.numpy(), fit.bias.numpy()
    assert fit.objective == pytest.approx(ref_objective, rel=1e-7, abs=0)
    np.testing.assert_allclose(w, ref_w, rtol=0, atol=1e-4)
    # Softmax ignores a shift of every bias; compare them centred.
    np.testing.assert_allclose(b - b.mean(), ref_b - ref_b.mean(), rtol=0, atol=1e-4)
    predicted = (vx @ w + b).argmax(1)
    np.testing.assert_array_equal(predicted, ref.predict(vx))
    # The probe standardises raw features the same way, so its accuracy is sklearn's.
    accuracy = fit_linear_probe(torch.from_numpy(raw_x).float(), torch.from_numpy(y), torch.from_numpy(raw_vx).float(),
                                torch.from_numpy(vy), weight_decay)
    assert accuracy == pytest.approx(np.mean(ref.predict(vx) == vy), abs=1e-6) and 0.5 < accuracy < 1.0


def test_probe_stops_at_the_stated_gradient_tolerance_on_ill_conditioned_features():
    x, y = _ill_conditioned()
    fit = fit_logistic_regression(x, y)
    _, grad_w, grad_b = _objective_and_grad(x.numpy(), y.numpy(), fit.weight.numpy(), fit.bias.numpy(), 1e-4)
    assert max(np.abs(grad_w).max(), np.abs(grad_b).max()) <= TOLERANCE
    assert fit.converged and fit.iterations > 200


def test_probe_warns_when_the_iteration_cap_stops_it_first():
    """The former fixed budget of 200 L-BFGS iterations stops short on the case above: a warning says so."""
    x, y = _ill_conditioned()
    converged = fit_logistic_regression(x, y)
    with pytest.warns(RuntimeWarning, match=r"not converged: gradient max-abs [0-9.e-]+ > tolerance 1e-06 after 200 "):
        capped = fit_logistic_regression(x, y, max_iter=200)
    assert not capped.converged and capped.iterations == 200 and capped.grad_norm > 10 * TOLERANCE
    assert capped.objective > converged.objective + 1e-7


def test_baseline_is_the_mean_over_seeded_inits_and_leaves_the_rng_alone():
    expected = []
    for seed in range(4):
        torch.manual_seed(seed)
        expected.append(linear_probe_accuracy(_factory(), EMBED, TRAIN, VAL))
    assert len(set(expected)) > 1  # the inits really differ, so the mean is not one of them by accident

    torch.manual_seed(123)
    untouched = torch.rand(3)
    torch.manual_seed(123)
    got = random_init_baseline(_factory, EMBED, TRAIN, VAL, inits=4)
    assert torch.equal(torch.rand(3), untouched)
    assert got["mean"] == pytest.approx(statistics.fmean(expected), abs=1e-12)
    assert got["std"] == pytest.approx(statistics.stdev(expected), abs=1e-12)
    assert (got["min"], got["max"], got["inits"]) == (min(expected), max(expected), 4)
    assert random_init_baseline(_factory, EMBED, TRAIN, VAL, inits=1) == {
        "mean": expected[0], "std": 0.0, "min": expected[0], "max": expected[0], "inits": 1,
    }


@pytest.mark.parametrize("inits", [0, -2, 2.5, True])
def test_baseline_inits_must_be_a_positive_int(inits):
    with pytest.raises(ConfigError) as err:
        random_init_baseline(_factory, EMBED, TRAIN, VAL, inits=inits)
    assert err.value.key == "eval.baseline_inits" and repr(inits) in str(err.value)


def test_final_eval_reports_the_gain_over_the_baseline_mean():
    torch.manual_seed(7)
    trained = _factory()
    experiment = Experiment(module=None, train_loader=None, val_loader=VAL, callbacks=[], encoder=trained,
                            encoder_factory=_factory, embed=EMBED, eval_train_loader=TRAIN)
    out = final_linear_eval(experiment, baseline_inits=3)
    baseline = random_init_baseline(_factory, EMBED, TRAIN, VAL, inits=3)
    assert out["linear_probe_acc"] == linear_probe_accuracy(trained, EMBED, TRAIN, VAL)
    assert out["random_init_linear_probe_acc"] == baseline["mean"] and out["random_init_linear_probe_std"] == baseline["std"]
    assert out["linear_probe_gain"] == pytest.approx(out["linear_probe_acc"] - baseline["mean"], abs=1e-12)


def test_final_eval_scores_the_held_out_split_not_the_validation_images():
    """With validation images carved out (``heldout_loader`` given), the end-of-run probe scores the held-out split:
    validation labels rotated so a probe on them would score 0, held-out ones intact."""
    torch.manual_seed(7)
    trained = _factory()
    rotated = [{"image": b["image"], "label": (b["label"] + 1) % 3} for b in VAL]
    experiment = Experiment(module=None, train_loader=None, val_loader=rotated, heldout_loader=VAL, callbacks=[], encoder=trained,
                            encoder_factory=_factory, embed=EMBED, eval_train_loader=TRAIN)
    assert experiment.final_eval_loader is VAL
    out = final_linear_eval(experiment, baseline_inits=2)
    assert out["linear_probe_acc"] == linear_probe_accuracy(trained, EMBED, TRAIN, VAL) != linear_probe_accuracy(trained, EMBED, TRAIN, rotated)
