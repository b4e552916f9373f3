"""The sweep runner: open the study, admit trials up to N, run them on every rank, tell the outcome.

``python -m sptrack.run RECIPE --sweep --trials N`` calls :func:`run_sweep`. What it does:

1. validates the options and the recipe's search space (no trial starts on bad input);
2. ``--workers K`` (K > 1): starts K copies of the same command as worker processes and waits;
   each is an ordinary client of the study, then this process prints the report;
3. ``--devices N --strategy ddp|fsdp2`` outside torchrun: re-runs itself under torchrun
   (:mod:`sptrack.tune.distributed`);
4. rank 0 opens (or resumes: ``load_if_exists``) the study and the tracker's parent run; then all
   ranks loop: rank 0 admits a trial (below), samples it and broadcasts ``{number, params}``;
   every rank trains it (:func:`~sptrack.tune.objective.run_trial`); rank 0 stores the run id in
   the trial's user attributes and tells the study COMPLETE / PRUNED / FAIL;
5. at the end, the report: best trials, importances, the optuna-dashboard command.

Admission (rank 0, under :func:`~sptrack.tune.storage.admission_lock`): fail stale trials of dead
workers (RDB heartbeat; their copies are queued WAITING), then ask if a WAITING trial exists or if
fewer than N trials count. A trial counts unless it is a FAIL that was retried. So N is the total
over every worker and every re-run: re-running a finished sweep starts nothing, and an
interrupted one runs only what is missing.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from sptrack.errors import ConfigError, suggestion
from sptrack.parallel.launch import resolve_devices
from sptrack.recipe.paths import first_missing
from sptrack.recipe.validate import STREAMED_DATASETS
from sptrack.tune.distributed import (
    LAUNCHED_ENV,
    World,
    broadcast_object,
    close_process_group,
    init_process_group,
    needs_relaunch,
    relaunch,
    under_torchrun,
    world_from_env,
)
from sptrack.tune.options import REPORTS_PER_TRIAL, SWEEP_VALIDATION_FRACTION, SweepOptions
from sptrack.tune.space import SearchSpace
from sptrack.tune.storage import StorageSpec, admission_lock, open_storage, resolve_storage

if TYPE_CHECKING:  # the trial runner imports Lightning; the checks and --dry-run do not need it
    from sptrack.tune.objective import TrialResult

#: Set in the worker processes of ``--workers K`` (their index).
WORKER_ENV = "SPTRACK_SWEEP_WORKER"


def study_name(recipe: Any, opts: SweepOptions) -> str:
    """``--study`` or ``<recipe>-sweep``."""
    return opts.study or f"{recipe.name}-sweep"


def storage_spec(recipe: Any, cfg: Any, opts: SweepOptions) -> StorageSpec:
    """``--storage`` resolved (default: ``<output_dir>/<recipe>/optuna.db``)."""
    return resolve_storage(opts.storage, str(Path(cfg.trainer.output_dir) / recipe.name))


def prepare(recipe: Any, cfg: Any, opts: SweepOptions) -> SearchSpace:
    """Every check that needs no storage and no training; raises :class:`ConfigError`."""
    opts.validate()
    storage_spec(recipe, cfg, opts)
    if cfg.trainer.strategy == "auto" and world_from_env().distributed:
        raise ConfigError("--strategy", f"this command runs as {world_from_env().size} processes (torchrun) but the strategy is 'auto'.",
                          "Pass --strategy ddp or --strategy fsdp2.")
    data = getattr(cfg, "data", None)
    if data is not None and not getattr(data, "validation_fraction", 0) and getattr(data, "dataset", None) not in STREAMED_DATASETS:
        # Trials are compared on images the final report does not score (see DataConfig). A stream
        # cannot be carved: its trials are compared on its "val" split.
        data.validation_fraction = SWEEP_VALIDATION_FRACTION
    return SearchSpace.from_config(cfg)


# ---------------------------------------------------------------------------------------- study
def _sampler(opts: SweepOptions):
    import optuna

    if opts.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=opts.sampler_seed, warn_independent_sampling=False)
    if opts.sampler == "random":
        return optuna.samplers.RandomSampler(seed=opts.sampler_seed)
    return optuna.samplers.TPESampler(seed=opts.sampler_seed)


def make_pruner(kind: str, every: int, startup: int):
    """The Optuna pruner of ``--pruner`` (``--prune-warmup`` is applied by the TrialMonitor, which asks it)."""
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=0, interval_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=every, max_resource="auto")
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=every, reduction_factor=3, min_early_stopping_rate=0)
    return optuna.pruners.NopPruner()


def open_study(name: str, spec: StorageSpec, opts: SweepOptions):
    """Create or load the study; a different direction or objective than it was made with is an error."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(spec, opts.heartbeat_s, opts.max_retry)
    direction = "maximize" if opts.direction == "max" else "minimize"
    study = optuna.create_study(study_name=name, storage=storage, sampler=_sampler(opts), pruner=make_pruner(opts.pruner, opts.prune_every, opts.prune_startup),
                                direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError("--direction", f"study {name!r} in {spec.shown_url} already {study.direction.name.lower()}s.",
                          "Use the same direction, or another --study name.")
    stored = study.user_attrs.get("objective")
    if stored is None:
        study.set_user_attr("objective", opts.objective)
    elif stored != opts.objective:
        raise ConfigError("--objective", f"study {name!r} optimises {stored!r}, not {opts.objective!r}.",
                          "Use the same objective, or another --study name.")
    return study, storage


def counted_trials(trials: Sequence[Any]) -> list:
    """The trials that count towards N: all but FAIL trials a later trial retries (and WAITING ones)."""
    from optuna.trial import TrialState

    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in trials if t.state != TrialState.WAITING and not (t.state == TrialState.FAIL and t.number in retried)]


def admit(study: Any, spec: StorageSpec, n_trials: int):
    """The next trial to run (a queued one first), or None when N trials exist."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    with admission_lock(spec, study.study_name):
        if spec.heartbeat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if not waiting and len(counted_trials(trials)) >= n_trials:
            return None
        return study.ask()


class Heartbeat:
    """Records the running trial's heartbeat every ``interval`` seconds (RDB storages).

    Optuna's own heartbeat thread runs only inside ``study.optimize``, which cannot drive the other
    ranks of a distributed trial; this uses the storage's public ``record_heartbeat``.
    """

    def __init__(self, storage: Any, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="sptrack-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            self.storage.record_heartbeat(self.trial_id)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def tell(study: Any, trial: Any, result: TrialResult) -> None:
    """Store the run id (and any error) on the trial and close it with its state."""
    from optuna.trial import TrialState

    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    if result.run_id:
        trial.set_user_attr("run_id", result.run_id)
    trial.set_user_attr("last_step", int(result.step))
    if result.error:
        trial.set_user_attr("error", result.error[:4000])
    if result.heldout is not None:
        trial.set_user_attr("heldout_value", result.heldout)
    if result.signals:
        trial.set_user_attr("signals", {str(step): values for step, values in result.signals.items()})
    if result.state == "COMPLETE":
        study.tell(trial, result.value)
    else:
        study.tell(trial, state=TrialState.PRUNED if result.state == "PRUNED" else TrialState.FAIL)


def unlogged_metric_error(study: Any, result: TrialResult) -> ConfigError | None:
    """The error that stops a study whose objective or prune metric a finished trial never logged.

    Only while no trial of the study has completed: once one has, the metric exists and a later trial
    that misses it is that trial's own failure.
    """
    from optuna.trial import TrialState

    if result.unlogged is None:
        return None
    trials = study.get_trials(deepcopy=False)
    if result.unlogged[0] == "--objective" and any(t.state == TrialState.COMPLETE for t in trials):
        return None
    if result.unlogged[0] == "--prune-metric" and any(t.intermediate_values for t in trials):
        return None
    flag, metric = result.unlogged
    hint = suggestion(metric, result.logged) or f" Logged metrics: {', '.join(result.logged) or 'none'}."
    return ConfigError(flag, f"{metric!r} is not a metric the trials log, so no trial could be scored.", hint)


class CreatedHere:
    """What a sweep command made (a new study, the folders of its default storage), to remove if it fails at once."""

    def __init__(self, recipe: Any, cfg: Any):
        root = Path(cfg.trainer.output_dir) / recipe.name
        self.folder = first_missing(root)
        self.trials_root = root / "sweeps"
        self.new_study = False

    def opened(self, study: Any) -> None:
        """Record whether ``study`` held no trial when this command opened it."""
        self.new_study = not study.get_trials(deepcopy=False)

    def discard(self, name: str, storage: Any) -> None:
        """Delete the new study and the folders this command created (nothing another run wrote)."""
        import shutil

        import optuna

        if self.new_study:
            try:
                optuna.delete_study(study_name=name, storage=storage)
            except KeyError:  # another worker of the same command deleted it first
                pass
            shutil.rmtree(self.trials_root / name, ignore_errors=True)  # the trial folders (objective.trial_dir)
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------- runner
def run_sweep(recipe: Any, cfg: Any, opts: SweepOptions, argv: Sequence[str]) -> int:
    """Run (or resume, or join) the sweep; returns the process exit code."""
    space = prepare(recipe, cfg, opts)
    name, spec = study_name(recipe, opts), storage_spec(recipe, cfg, opts)
    worker = os.environ.get(WORKER_ENV)
    if opts.workers > 1 and worker is None and not under_torchrun():
        return _launch_workers(recipe, cfg, opts, name, spec, argv)
    devices, _ = resolve_devices(cfg.trainer.devices, cfg.trainer.num_nodes)  # the CLI has resolved them already
    if needs_relaunch(devices, cfg.trainer.strategy) and not os.environ.get(LAUNCHED_ENV):
        return relaunch(devices, argv)
    world = init_process_group(cfg.trainer.accelerator) if under_torchrun() else World()
    if opts.prune_every is None:
        from sptrack.tune.objective import trial_steps

        # Every rank computes the same number from the recipe's own config (the pruner needs it before any trial).
        steps = trial_steps(recipe, cfg, world.size)
        opts.prune_every = max(1, steps // REPORTS_PER_TRIAL)
        if world.is_zero:
            print(f"sptrack.tune: trials report every {opts.prune_every} optimizer steps ({REPORTS_PER_TRIAL} reports in a "
                  f"{steps}-step trial; --prune-every K to choose)", flush=True)
    # Optuna warns that heartbeats are meant for study.optimize: this runner beats itself (Heartbeat).
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    # One line per trial instead of Lightning's per-fit banners.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    study = storage = None
    parent = None
    created = CreatedHere(recipe, cfg)
    if world.is_zero:
        from sptrack.tune.tracking import ensure_parent_run

        study, storage = open_study(name, spec, opts)
        created.opened(study)
        with admission_lock(spec, name):  # commands starting on a new study at once make one parent run
            parent = ensure_parent_run(study, cfg, recipe.name)
    parent = broadcast_object(parent, world)
    from sptrack.tune.objective import TrialContext, run_trial

    ctx = TrialContext(recipe, cfg, name, opts.objective, opts.monitor, opts.prune_every, parent, world.distributed, opts.prune_warmup)
    while True:
        trial = payload = None
        if world.is_zero:
            trial = admit(study, spec, opts.trials)
            if trial is not None:
                payload = {"number": trial.number, "params": space.sample(trial)}
        payload = broadcast_object(payload, world)
        if payload is None:
            break
        if world.is_zero and spec.heartbeat:
            with Heartbeat(storage, trial._trial_id, opts.heartbeat_s):  # noqa: SLF001 - Optuna exposes no public trial id
                result = run_trial(ctx, payload["number"], payload["params"], trial)
        else:
            result = run_trial(ctx, payload["number"], payload["params"], trial if world.is_zero else None)
        stop = None
        if world.is_zero:
            tell(study, trial, result)
            _print_trial(payload, result)
            stop = unlogged_metric_error(study, result)
            if stop is not None:
                created.discard(name, storage)
        stop = broadcast_object(stop, world)  # also the barrier between trials
        if stop is not None:
            close_process_group(world)
            raise stop
    if world.is_zero and worker is None:
        _finish(study, spec, cfg, recipe)
    close_process_group(world)
    return 0


def _print_trial(payload: dict, result: TrialResult) -> None:
    value = f" value={result.value:.4g}" if result.value is not None else ""
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in payload["params"].items())
    error = f" ({result.error.splitlines()[0]})" if result.error else ""
    print(f"sptrack.tune: trial {payload['number']} {result.state}{value} at step {result.step} [{params}] in {result.wall_s:.1f} s{error}",
          flush=True)


def _finish(study: Any, spec: StorageSpec, cfg: Any, recipe: Any) -> None:
    from sptrack.tune.report import print_report, state_counts
    from sptrack.tune.tracking import summarize_parent_run

    summarize_parent_run(study, cfg, recipe.name, state_counts(study))
    print_report(study, spec)


def _launch_workers(recipe: Any, cfg: Any, opts: SweepOptions, name: str, spec: StorageSpec, argv: Sequence[str]) -> int:
    """Start ``--workers K`` copies of this command on the same study, wait for them, then report."""
    from sptrack.tune.tracking import ensure_parent_run

    # Created here, once, so that the workers do not race to create the study or its parent run.
    created = CreatedHere(recipe, cfg)
    study, storage = open_study(name, spec, opts)
    created.opened(study)
    with admission_lock(spec, name):
        ensure_parent_run(study, cfg, recipe.name)
    procs = []
    for index in range(opts.workers):
        env = {**os.environ, WORKER_ENV: str(index)}
        procs.append(subprocess.Popen([sys.executable, "-m", "sptrack.run", *argv], env=env))
    codes = [p.wait() for p in procs]
    if 2 in codes:  # a bad input the workers reported (one line each): the study is not worth a report
        created.discard(name, storage)
        return 2
    failed = [c for c in codes if c != 0]
    if failed:
        print(f"sptrack.tune: {len(failed)} of {opts.workers} workers exited with an error (codes {codes}).", file=sys.stderr)
    study, _ = open_study(name, spec, opts)
    _finish(study, spec, cfg, recipe)
    return failed[0] if failed else 0
