"""``TrackerLogger``: the single Lightning integration of a :class:`~sptrack.track.base.Tracker`.

It is a Lightning ``Logger`` (metrics arrive through ``log_metrics(metrics, step)``, from Lightning
and from ``sptrack.Module``'s ``hparams/lr_<name>``) *and* a ``Callback`` (run start/resume,
checkpoints, exceptions). Pass it in ``callbacks=[...]`` only; it adds itself to
``trainer.loggers`` when the run starts (after ``ModelCheckpoint`` has chosen its folder, which
therefore does not change) and removes itself when the run ends.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sptrack.track.base import FAILED, FINISHED, KILLED, NoTracker, Tracker, TrackerError, TrackerUnreachableError, log
from sptrack.track.params import flatten, redact_mapping, redact_text, summary_params, summary_rows

CHECKPOINT_KEY = "sptrack_tracker"
SUMMARY_TABLE = "optim/summary"
#: Columns of the optimizer table that are not logged as ``optim.<name>.<field>`` params
#: (they change between a run and its resumption, and MLflow params cannot change).
TABLE_ONLY_FIELDS = ("lr_at_start",)


class TrackerLogger(Logger, Callback):
    """Drive one tracker run per job from a Lightning Trainer.

    ``Trainer(callbacks=[TrackerLogger(tracker, config=cfg, recipe_path="recipe.yaml")])``:

    * at set-up, rank 0 checks that the backend answers (a one-line error otherwise, on every rank);
    * when training (or a lone validate/test/predict) starts, after any checkpoint was restored,
      rank 0 starts the run, or resumes the run id stored in the checkpoint, and broadcasts the run
      id to every rank (``tracker.run_id`` is set everywhere);
    * rank 0 logs the flattened, redacted ``config`` (the Module's ``hparams`` when ``config`` is
      None) plus ``trainer/*`` settings as params, and the recipe file (redacted), the resolved
      config and the environment as artifacts;
    * at the first training batch (the Module has then filled its clip settings) it logs the
      ``optim/summary`` table, and as ``optim.<name>.<field>`` params the summary fields the config
      does not hold already (``class``, ``num_params``, ``matched_modules``, ...: one name per value);
    * every ``log_metrics(metrics, step)`` goes to the tracker at ``step`` (Lightning's
      ``global_step``-based axis; rank 0 only);
    * checkpoints store the run id under ``checkpoint["sptrack_tracker"]["runs"][kind]``, and a
      fit resumed from such a checkpoint continues that run (same id, no duplicated steps);
    * the run ends FINISHED, FAILED (an exception) or KILLED (KeyboardInterrupt, SIGTERM).
    """

    def __init__(
        self,
        tracker: Tracker,
        *,
        config: Any = None,
        recipe_path: Optional[str] = None,
        artifacts: Iterable[str] = (),
    ):
        super().__init__()
        self.tracker = tracker
        self.config = config
        self.recipe_path = recipe_path
        self.artifacts = list(artifacts)
        self._trainer: Optional[pl.Trainer] = None
        self._started = False
        self._checkpoint_run_id: Optional[str] = None
        self._previous_run_id: Optional[str] = None
        self._status: Optional[str] = None
        self._summary_logged = False
        self._inputs_logged = False
        self._pending_params: dict[str, Any] = {}
        #: Flattened keys of every parameter logged so far (the summary params leave them out).
        self._logged_keys: set[str] = set()
        self._installed = False

    # ------------------------------------------------------------------ Logger
    @property
    def name(self) -> Optional[str]:
        return getattr(self.tracker, "experiment", None) or self.tracker.kind

    @property
    def version(self) -> Optional[str]:
        return self.tracker.run_id

    @property
    def save_dir(self) -> Optional[str]:
        return None

    def _is_zero(self) -> bool:
        trainer = self._trainer
        return trainer.is_global_zero if trainer is not None else True

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        if not self._is_zero():
            return
        if self._started and self.tracker.active:
            flat = flatten(params)
            self._logged_keys.update(flat)
            self.tracker.log_params(flat)
        else:
            self._pending_params.update(flatten(params))

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        if self._started and self.tracker.active and self._is_zero():
            self.tracker.log_metrics(metrics, step)

    def finalize(self, status: str) -> None:
        if not self._started:
            return
        self._started = False
        if self._installed and self._trainer is not None:
            # Leave trainer.loggers as the user configured it (trainer.log_dir, later stages).
            self._trainer.loggers = [logger for logger in self._trainer.loggers if logger is not self]
            self._installed = False
        final = {"success": self._status or FINISHED, "failed": self._status or FAILED, "finished": KILLED}.get(status, FAILED)
        self._status = None
        if not (self._is_zero() and self.tracker.active):
            return
        try:
            if not self._summary_logged and self._trainer is not None and self._trainer.state.fn == "fit":
                self._log_summary(self._trainer, self._trainer.lightning_module)
        except Exception as e:  # noqa: BLE001 - never hide the run's own outcome
            log.warning("sptrack.track: could not log the optimizer summary (%s).", e)
        try:
            self.tracker.finish(final)
        except Exception as e:  # noqa: BLE001
            log.error("sptrack.track: closing %s run %s failed: %s", self.tracker.kind, self.tracker.run_id, e)

    # ------------------------------------------------------------------ Callback
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Fail fast (before the model is built) when the backend does not answer."""
        self._trainer = trainer
        error: Optional[BaseException] = None
        message = None
        if trainer.is_global_zero:
            try:
                self.tracker.check()
            except TrackerError as e:
                error, message = e, str(e)
        message = trainer.strategy.broadcast(message, src=0)
        if message is not None:
            raise error if error is not None else TrackerUnreachableError(message)

    def _ensure_started(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._started:
            return
        self._trainer = trainer
        if not any(logger is self for logger in trainer.loggers):
            trainer.loggers = [*trainer.loggers, self]
            self._installed = True
        outcome: Optional[tuple] = None
        error: Optional[BaseException] = None
        if trainer.is_global_zero:
            try:
                run_id = self.tracker.start(run_id=self._checkpoint_run_id or self._previous_run_id)
                self._started = True
                self._summary_logged = False
                self._log_inputs(trainer, pl_module)
                outcome = ("ok", run_id)
            except Exception as e:  # noqa: BLE001 - re-raised below on every rank
                error = e
                outcome = ("error", f"{type(e).__name__}: {e}")
        outcome = trainer.strategy.broadcast(outcome, src=0)
        if outcome[0] == "error":
            if error is not None:
                raise error
            raise TrackerError(f"the tracker failed on rank 0: {outcome[1]}")
        if not trainer.is_global_zero:
            self.tracker.attach(outcome[1])
        self._previous_run_id = outcome[1]
        self._started = True

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._ensure_started(trainer, pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        self._ensure_started(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._ensure_started(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._ensure_started(trainer, pl_module)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._ensure_started(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._summary_logged and self._started and trainer.is_global_zero:
            self._log_summary(trainer, pl_module)

    @property
    def state_key(self) -> str:
        return f"TrackerLogger[{self.tracker.kind}]"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """``checkpoint["sptrack_tracker"] = {"version": 1, "runs": {kind: run_id, ...}}`` (one entry per tracker)."""
        if self.tracker.run_id is not None:
            entry = checkpoint.setdefault(CHECKPOINT_KEY, {"version": 1, "runs": {}})
            entry["runs"][self.tracker.kind] = self.tracker.run_id
        if trainer.is_global_zero and self.tracker.active:
            self.tracker.on_checkpoint()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        runs = (checkpoint.get(CHECKPOINT_KEY) or {}).get("runs") or {}
        if self.tracker.kind in runs:
            self._checkpoint_run_id = runs[self.tracker.kind]
        elif runs and trainer.is_global_zero and not isinstance(self.tracker, NoTracker):
            log.warning(
                "sptrack.track: the checkpoint holds %s; this job tracks with %s, so a new run starts.",
                ", ".join(f"{k} run {v}" for k, v in runs.items()), self.tracker.kind,
            )

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._status = KILLED if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) else FAILED

    # ------------------------------------------------------------------ what is logged
    def _log_inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tracker = self.tracker
        config = self.config
        if config is None:
            hparams = getattr(pl_module, "hparams", None)
            config = dict(hparams) if hparams else {}
        params = {**flatten(config), **self._pending_params, **self._trainer_params(trainer, pl_module)}
        self._pending_params = {}
        self._logged_keys.update(params)
        tracker.log_params(params)
        if self._inputs_logged:
            return
        self._inputs_logged = True
        if self.recipe_path:
            with open(self.recipe_path, encoding="utf-8", errors="replace") as f:
                tracker.log_text(redact_text(f.read(), self.recipe_path), f"recipe/{os.path.basename(self.recipe_path)}")
        if self.config is not None:
            tracker.log_dict(redact_mapping(self.config), "config/resolved.json")
        from sptrack.track.environment import collect_environment

        code_path = os.path.dirname(os.path.abspath(self.recipe_path)) if self.recipe_path else None
        tracker.log_dict(collect_environment(code_path), "environment.json")
        for path in self.artifacts:
            tracker.log_artifact(path)

    @staticmethod
    def _trainer_params(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return {
            "trainer/strategy": type(trainer.strategy).__name__,
            "trainer/world_size": int(trainer.world_size),
            "trainer/num_nodes": int(trainer.num_nodes),
            "trainer/precision": str(trainer.precision),
            "trainer/max_epochs": trainer.max_epochs,
            "trainer/max_steps": trainer.max_steps,
            "trainer/accumulate_grad_batches": int(getattr(pl_module, "accumulate_grad_batches", trainer.accumulate_grad_batches)),
        }

    def _log_summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The ``optim/summary`` table and the ``optim.<name>.<field>`` params the config lacks (rank 0, once per fit)."""
        self._summary_logged = True
        summary_fn = getattr(pl_module, "optimizer_summary", None)
        if summary_fn is None:
            return
        rows = []
        for row in summary_fn():
            row = dict(row)
            optimizers = trainer.optimizers
            index = row.get("index")
            group = optimizers[index].param_groups[0] if index is not None and index < len(optimizers) else {}
            # The configured lr (schedulers keep it as initial_lr); the lr right now is table-only.
            row["lr_at_start"] = float(group["lr"]) if "lr" in group else row.get("lr")
            row["lr"] = float(group.get("initial_lr", row.get("lr")))
            rows.append(row)
        if not rows:
            return
        columns, cells = summary_rows(rows)
        params_rows = [{k: v for k, v in r.items() if k not in TABLE_ONLY_FIELDS} for r in rows]
        self.tracker.log_params(summary_params(params_rows, config_keys=self._logged_keys))
        self.tracker.log_table(SUMMARY_TABLE, columns, cells)
