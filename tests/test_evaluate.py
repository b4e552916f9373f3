"""The end-of-run linear evaluation: the probe itself, the multi-init random baseline, the gain."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from sptrack.errors import ConfigError
from sptrack.recipe import Experiment
from sptrack.recipe.evaluate import fit_linear_probe, linear_probe_accuracy, random_init_baseline
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
