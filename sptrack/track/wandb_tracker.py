"""Weights & Biases adapter: offline unless credentials exist, resumable runs, one ``trainer/global_step`` axis.

Every history row carries ``trainer/global_step`` and all other metrics are defined against it
(``define_metric("*", step_metric="trainer/global_step")``), so the x axis is the training step
whatever the order of calls. Points of the same step are merged into one row (one ``run.log`` per
step: cheaper, and W&B's internal ``_step`` stays monotonic); rows are handed to ``run.log`` by a
background thread, so the training loop only appends to a queue. On resume, points at or below the
last step already in the run are dropped: online, W&B's summary says where it stopped; offline,
a small state file ``<dir>/wandb/sptrack-<run_id>.json`` (written at checkpoints and at the end)
does.
"""

from __future__ import annotations

import json
import netrc
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence
from urllib.parse import urlparse

from sptrack.track.base import FAILED, FINISHED, KILLED, STATUSES, Tracker, TrackerError, log
from sptrack.track.params import prepare_params, redact_value

STEP_KEY = "trainer/global_step"
#: ``run.finish(exit_code=...)`` per status; W&B shows any non-zero code as failed.
EXIT_CODES = {FINISHED: 0, FAILED: 1, KILLED: 130}
_STATE_EVERY_S = 30.0


def _new_run_id(length: int = 8) -> str:
    """A W&B-style run id: lowercase letters and digits."""
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def has_wandb_credentials() -> bool:
    """Whether an API key is configured: ``$WANDB_API_KEY`` or a netrc entry for W&B's API host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import wandb

        base_url = wandb.Settings().base_url
    except Exception:  # noqa: BLE001
        base_url = os.environ.get("WANDB_BASE_URL", "")
    host = urlparse(base_url).hostname
    if not host:
        return False
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: Optional[str] = None) -> str:
    """``mode`` if given, else ``$WANDB_MODE``, else ``online`` with credentials and ``offline`` without."""
    chosen = mode or os.environ.get("WANDB_MODE")
    if chosen:
        return {"dryrun": "offline", "run": "online"}.get(chosen, chosen)
    return "online" if has_wandb_credentials() else "offline"


class WandbTracker(Tracker):
    """A W&B run per job.

    Args:
        project: W&B project (``experiment`` is accepted as an alias, like MLflow's experiment).
        entity, run_name, tags, group, job_type: passed to ``wandb.init``.
        run_id: resume this run instead of creating one.
        dir: where ``wandb/`` is written (default: cwd).
        mode: ``online`` / ``offline`` / ``disabled``; default: online when an API key is
            configured (``WANDB_API_KEY`` or netrc), offline otherwise (``wandb sync`` uploads later).
        settings: extra ``wandb.Settings`` fields (a mapping).
    """

    kind = "wandb"

    def __init__(
        self,
        project: Optional[str] = None,
        entity: Optional[str] = None,
        run_name: Optional[str] = None,
        tags: Optional[Sequence[str]] = None,
        *,
        experiment: Optional[str] = None,
        run_id: Optional[str] = None,
        dir: Optional[str] = None,  # noqa: A002 - wandb's own name
        mode: Optional[str] = None,
        group: Optional[str] = None,
        job_type: Optional[str] = None,
        settings: Optional[Mapping[str, Any]] = None,
    ):
        super().__init__()
        self.project = project or experiment or os.environ.get("WANDB_PROJECT") or "sptrack"
        self.entity = entity
        self.run_name = run_name
        self.tags = list(tags or [])
        self.requested_run_id = run_id
        self.dir = Path(os.path.abspath(dir or os.getcwd()))
        self.mode = mode
        self.group = group
        self.job_type = job_type
        self.settings = dict(settings or {})
        self.run = None
        self._row: Optional[dict] = None
        self._row_step: Optional[int] = None
        self._next_row = 0
        self._last_written_step: Optional[int] = None
        self._state_saved_at = 0.0

    @property
    def experiment(self) -> str:
        return self.project

    def _state_path(self, run_id: str) -> Path:
        return self.dir / "wandb" / f"sptrack-{run_id}.json"

    def _read_state(self, run_id: str) -> dict:
        try:
            return json.loads(self._state_path(run_id).read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self) -> None:
        if self.run_id is None:
            return
        path = self._state_path(self.run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"next_row": self._next_row, "last_global_step": self._last_written_step}))
        os.replace(tmp, path)
        self._state_saved_at = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def start(self, run_id: Optional[str] = None) -> str:
        import wandb

        if self.active:
            raise TrackerError(f"W&B run {self.run_id} is already active; finish it first.")
        mode = resolve_mode(self.mode)
        run_id = self.requested_run_id or run_id
        resuming = bool(run_id)
        run_id = run_id or _new_run_id()
        self.dir.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(**self.settings) if self.settings else None
        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            name=self.run_name,
            tags=self.tags or None,
            group=self.group,
            job_type=self.job_type,
            dir=str(self.dir),
            id=run_id,
            resume="allow",
            reinit="create_new",
            mode=mode,
            settings=settings,
        )
        self.run_id = self.run.id
        self.mode_used = mode
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY, step_sync=True)
        state = self._read_state(self.run_id) if resuming else {}
        online_next = int(getattr(self.run, "step", 0) or 0)
        online_last = None
        if resuming:
            try:
                online_last = self.run.summary.get(STEP_KEY)
            except Exception:  # noqa: BLE001
                online_last = None
        self._next_row = max(online_next, int(state.get("next_row") or 0))
        floors = [s for s in (state.get("last_global_step"), online_last) if s is not None]
        self._global_floor = int(max(floors)) if floors else None
        self._step_floor = {}
        self._last_written_step = self._global_floor
        self.resumed = resuming
        self.last_step = None
        self._row = None
        self._queue = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._drain, args=(self.run, self._queue), name="sptrack-wandb-log", daemon=True)
        self._worker.start()
        self.active = True
        return self.run_id

    @staticmethod
    def _drain(run, rows: "queue.SimpleQueue") -> None:
        warned = False
        while True:
            item = rows.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            row, index = item
            try:
                run.log(row, step=index, commit=True)
            except Exception as e:  # noqa: BLE001 - keep logging the next rows
                if not warned:
                    warned = True
                    log.warning("sptrack.track: W&B refused a history row (%s).", e)

    def _stop_worker(self) -> None:
        worker = getattr(self, "_worker", None)
        if worker is not None:
            self._queue.put(None)
            worker.join()
            self._worker = None

    def finish(self, status: str = FINISHED) -> None:
        if not self.active:
            return
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self._emit_row()
        self._stop_worker()
        self._write_state()
        try:
            self.run.summary["sptrack/status"] = status
            self.run.finish(exit_code=EXIT_CODES[status])
        finally:
            self.active = False

    def flush(self, timeout: Optional[float] = None) -> bool:
        if not self.active:
            return True
        self._emit_row()
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def on_checkpoint(self) -> None:
        if self.active:
            self._emit_row()
            self._write_state()

    # ------------------------------------------------------------------ data
    def _require(self):
        if not self.active or self.run is None:
            raise TrackerError("WandbTracker: start() the run before logging.")
        return self.run

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._require().config.update(prepare_params(params), allow_val_change=True)

    def _emit_row(self) -> None:
        if not self._row:
            self._row = None
            return
        row, step = self._row, self._row_step
        self._row = None
        self._queue.put(({**row, STEP_KEY: step}, self._next_row))
        self._next_row += 1
        if self._last_written_step is None or step > self._last_written_step:
            self._last_written_step = step
        if time.monotonic() - self._state_saved_at > _STATE_EVERY_S:
            self._write_state()

    def _add(self, values: Mapping[str, Any], step: int) -> None:
        self._require()
        if self._row is not None and step != self._row_step:
            self._emit_row()
        if self._row is None:
            self._row = {}
            self._row_step = step
        self._row.update(values)

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._add(metrics, step)

    def _current_step(self) -> int:
        if self._row is not None:
            return self._row_step
        if self.last_step is not None:
            return self.last_step
        return self._global_floor + 1 if self._global_floor is not None else 0

    def log_table(self, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        import wandb

        table = wandb.Table(columns=list(columns), data=[list(r) for r in rows])
        self._add({name: table}, self._current_step())
        self._emit_row()

    def _save(self, path: Path) -> None:
        run = self._require()
        run.save(str(path), base_path=run.dir, policy="now")

    def log_text(self, text: str, artifact_file: str) -> None:
        run = self._require()
        path = Path(run.dir) / artifact_file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        self._save(path)

    def log_artifact(self, local_path: str, artifact_path: Optional[str] = None) -> None:
        run = self._require()
        target = Path(run.dir) / (artifact_path or "") / os.path.basename(local_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local_path, target)
        self._save(target)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """W&B tags are labels: ``{k: v}`` is stored in the config under ``tags/<k>``."""
        run = self._require()
        run.config.update({f"tags/{k}": redact_value(v) for k, v in tags.items()}, allow_val_change=True)
