"""Final linear evaluation: a logistic-regression probe on frozen embeddings, trained to convergence.

Used at the end of a run for the trained encoder and for randomly initialised encoders of the same
architecture, so the report states how much pretraining added. One random init is a noisy
reference: on MNIST-5k the probe of five ViT inits spans 0.649-0.726 and of five small CNNs
0.727-0.847, so the baseline is the mean over several inits, reported with its spread.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

import torch
import torch.nn.functional as F

from sptrack.recipe.config import EvalConfig
from sptrack.recipe.validate import check_eval


@torch.no_grad()
def extract(encoder: Any, embed: Callable, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and labels of every batch of ``loader`` (encoder in eval mode, restored after)."""
    was_training = encoder.training
    encoder.eval()
    features, labels = [], []
    for batch in loader:
        features.append(embed(encoder, batch["image"]).float().cpu())
        labels.append(batch["label"].cpu())
    encoder.train(was_training)
    return torch.cat(features), torch.cat(labels)


def fit_linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
    weight_decay: float = 1e-4, max_iter: int = 200,
) -> float:
    """Held-out accuracy of an L2-regularised multinomial logistic regression (L-BFGS, standardised features)."""
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-6)
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    generator = torch.Generator().manual_seed(0)
    weight = (0.01 * torch.randn(train_x.shape[1], num_classes, generator=generator)).requires_grad_()
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(((val_x @ weight + bias).argmax(1) == val_y).float().mean())


def linear_probe_accuracy(encoder: Any, embed: Callable, train_loader, val_loader) -> float:
    """Extract frozen embeddings of both splits and return the probe's held-out accuracy."""
    train_x, train_y = extract(encoder, embed, train_loader)
    val_x, val_y = extract(encoder, embed, val_loader)
    return fit_linear_probe(train_x, train_y, val_x, val_y)


def random_init_baseline(encoder_factory: Callable[[], Any], embed: Callable, train_loader, val_loader, inits: int = 5) -> dict[str, float]:
    """Probe accuracy of ``inits`` random-init encoders (seeds 0 .. inits-1): mean, sample std, min, max.

    Runs under a forked RNG, so the caller's random stream is the same whatever ``inits`` is.
    """
    check_eval(EvalConfig(baseline_inits=inits))
    accs = []
    with torch.random.fork_rng(devices=[]):
        for seed in range(inits):
            torch.manual_seed(seed)
            accs.append(linear_probe_accuracy(encoder_factory(), embed, train_loader, val_loader))
    return {
        "mean": statistics.fmean(accs), "std": statistics.stdev(accs) if inits > 1 else 0.0,
        "min": min(accs), "max": max(accs), "inits": inits,
    }
