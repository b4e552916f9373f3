"""Test recipe: ``recipes/dino.py`` plus a callback with which every rank saves the weights it ended with.

At the end of training rank R writes ``<trainer.output_dir>/weights-rank<R>.pt``: its Module's
``state_dict`` with its world size, number of nodes and global step. ``trainer.output_dir`` is the
one given to that node's own command, so a test of a multi-node launch, where each node has its own
folder (no shared file system), can compare what every node ended with.
"""

from __future__ import annotations

from pathlib import Path

from sptrack.recipe.loading import load_recipe

_DINO = load_recipe(str(Path(__file__).resolve().parents[2] / "recipes" / "dino.py"))
Config = _DINO.config_cls


def build(cfg):
    """The DINO experiment, with :class:`SaveWeights` appended to its callbacks."""
    import lightning.pytorch as pl
    import torch

    class SaveWeights(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            out = Path(cfg.trainer.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            record = {"world_size": trainer.world_size, "num_nodes": trainer.num_nodes, "global_step": trainer.global_step,
                      "state_dict": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}}
            torch.save(record, out / f"weights-rank{trainer.global_rank}.pt")

    experiment = _DINO.build(cfg)
    experiment.callbacks.append(SaveWeights())
    return experiment
