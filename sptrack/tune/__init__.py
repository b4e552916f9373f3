"""Optuna sweeps over a recipe's search space: ``python -m sptrack.run RECIPE --sweep --trials N``.

One concept per module:

* :mod:`~sptrack.tune.space` - the declarative ``search_space`` (parse, validate, sample, apply);
* :mod:`~sptrack.tune.options` - the sweep options and their checks;
* :mod:`~sptrack.tune.storage` - SQLite (default), journal file or RDB URL; heartbeat; admission lock;
* :mod:`~sptrack.tune.distributed` - rank 0 asks, params and decisions are broadcast; torchrun relaunch;
* :mod:`~sptrack.tune.pruning` - reports every K optimizer steps, prune / non-finite decisions on all ranks;
* :mod:`~sptrack.tune.tracking` - MLflow parent/child runs, W&B groups, trial tags;
* :mod:`~sptrack.tune.objective` - one trial on every rank;
* :mod:`~sptrack.tune.study` - the runner (workers, resume, retries);
* :mod:`~sptrack.tune.report` - best trials, importances, the optuna-dashboard command.

The training core (``sptrack.module``, ``sptrack.optim``) never imports Optuna or the trackers.
"""

from sptrack.tune.options import SweepOptions
from sptrack.tune.space import Param, SearchSpace

__all__ = ["Param", "SearchSpace", "SweepOptions", "run_sweep"]


def __getattr__(name: str):
    # The runner imports Optuna and Lightning; keep `import sptrack.tune` light.
    if name == "run_sweep":
        from sptrack.tune.study import run_sweep

        return run_sweep
    raise AttributeError(f"module 'sptrack.tune' has no attribute {name!r}")
