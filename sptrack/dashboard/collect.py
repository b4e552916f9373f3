"""Read what a report shows from MLflow: the runs of an experiment or a study, and their metric histories.

Everything comes from the tracking server's public API (``MlflowClient.search_runs`` and
``get_metric_history``), so a report can be built from any MLflow store the trackers wrote to
(``sqlite:///...``, ``http://...``, a ``file:`` folder). Bad selections fail before anything is
written, with the option's name and the closest valid value.
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from sptrack.dashboard import layout
from sptrack.errors import ConfigError, suggestion


@dataclass
class RunSummary:
    """One run of the report: identity, trial tags, sweep parameters, optimizer settings, last values."""

    run_id: str
    name: str
    status: str
    experiment_id: str
    start_time: int
    trial_number: Optional[int] = None
    trial_state: Optional[str] = None
    params: dict[str, Any] = field(default_factory=dict)  # the sampled parameters (sptrack.param.* tags)
    optimizers: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> field -> the optim.<name>.<field> param
    final: dict[str, float] = field(default_factory=dict)  # the run's last value of each metric

    @property
    def label(self) -> str:
        """The legend label: the run name and the first 8 characters of its id."""
        return f"{self.name} ({self.run_id[:8]})"


@dataclass
class StudySummary:
    """A sweep as the trackers recorded it: its parent run, direction and swept parameters."""

    name: str
    parent_run_id: Optional[str]
    direction: str
    objective: str
    params: list[str]


@dataclass
class ReportData:
    """Everything one report plots; :meth:`to_json` is the machine-readable block embedded in the HTML."""

    tracking_uri: str
    title: str
    experiments: list[str]
    runs: list[RunSummary]
    #: metric key -> run id -> {"step": [...], "value": [...]}, in ``get_metric_history`` order.
    histories: dict[str, dict[str, dict[str, list]]]
    study: Optional[StudySummary] = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only (the embedded ``sptrack-data`` block)."""
        return {
            "tracking_uri": self.tracking_uri, "title": self.title, "experiments": self.experiments,
            "runs": [asdict(r) for r in self.runs], "histories": self.histories,
            "study": asdict(self.study) if self.study else None,
        }


def _parse(value: str) -> Any:
    """A tag value back to a number/string (tags are written with ``str`` / ``repr``)."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _all_runs(client: Any, experiment_ids: Sequence[str], filter_string: str = "") -> list:
    """Every matching run (pages through ``search_runs``)."""
    runs, token = [], None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _experiment_ids(client: Any, names: Sequence[str], uri: str) -> list[str]:
    ids = []
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            known = [e.name for e in client.search_experiments()]
            hint = suggestion(name, known) or (f" Experiments there: {', '.join(sorted(known)[:12])}." if known else " The store has no experiment.")
            raise ConfigError("--experiment", f"no experiment {name!r} at {uri}.", hint)
        ids.append(exp.experiment_id)
    return ids


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def optimizer_settings(params: dict[str, str], metric_keys: Sequence[str] = ()) -> dict[str, dict[str, str]]:
    """``{optimizer: {field: value}}`` of :data:`layout.OPTIMIZER_FIELDS` from a run's params.

    The optimizers are the ones with an ``optim.<name>.class`` param (the optimizer summary) or an
    ``hparams/lr_<name>`` metric. A field is ``optim.<name>.<field>`` (the recipe's own keys and the
    summary's), else ``optim.<name>.optimizer.<field>`` (``Module(optim=...)``'s form, for lr and
    weight_decay), else, for runs tracked before the one naming scheme, ``optim/<name>/<field>``.
    """
    names = {k[len("optim."):-len(".class")] for k in params if k.startswith("optim.") and k.endswith(".class")}
    names |= {layout.optimizer_name(k) for k in layout.lr_keys(metric_keys)}
    for key in params:  # older runs
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "optim":
            names.add(parts[1])
    out: dict[str, dict[str, str]] = {}
    for name in sorted(names):
        fields = {}
        for f in layout.OPTIMIZER_FIELDS:
            for key in (f"optim.{name}.{f}", f"optim.{name}.optimizer.{f}", f"optim/{name}/{f}"):
                if key in params:
                    fields[f] = params[key]
                    break
        if fields:
            out[name] = fields
    return out


def _summarize(run: Any) -> RunSummary:
    tags, params = run.data.tags, run.data.params
    optimizers = optimizer_settings(params, list(run.data.metrics))
    number = tags.get(layout.TAG_TRIAL)
    return RunSummary(
        run_id=run.info.run_id, name=run.info.run_name or run.info.run_id[:8], status=run.info.status,
        experiment_id=run.info.experiment_id, start_time=int(run.info.start_time or 0),
        trial_number=int(number) if number is not None and number.isdigit() else None,
        trial_state=tags.get(layout.TAG_STATE),
        params={k[len(layout.TAG_PARAM):]: _parse(v) for k, v in sorted(tags.items()) if k.startswith(layout.TAG_PARAM)},
        optimizers=optimizers,
        final=dict(sorted(run.data.metrics.items())),
    )


def _select(runs: list, wanted: Optional[Sequence[str]], where: str) -> list:
    """The runs named by ``--runs`` (full ids or unique prefixes), in the order given."""
    if not wanted:
        return runs
    by_id = {r.info.run_id: r for r in runs}
    chosen = []
    for item in wanted:
        hits = [rid for rid in by_id if rid == item] or [rid for rid in by_id if rid.startswith(item)]
        if len(hits) != 1:
            problem = f"run {item!r} is not in {where}." if not hits else f"{item!r} is the prefix of {len(hits)} runs in {where}."
            hint = suggestion(item, by_id) or f" Runs there: {', '.join(sorted(by_id)[:8])}{' ...' if len(by_id) > 8 else ''}."
            raise ConfigError("--runs", problem, hint if not hits else "Give more characters of the run id.")
        chosen.append(by_id[hits[0]])
    return chosen


def collect(tracking_uri: str, experiments: Sequence[str] = (), study: Optional[str] = None,
            run_ids: Optional[Sequence[str]] = None) -> ReportData:
    """The runs of ``experiments`` (all runs but sweep parents) or of the sweep ``study``, with histories.

    ``run_ids`` narrows the selection (full ids or unique prefixes). ``study`` may be combined with
    ``experiments`` to look for it in those experiments only (default: every experiment).
    """
    from mlflow.tracking import MlflowClient

    if not experiments and not study:
        raise ConfigError("--experiment", "no runs selected.", "Give --experiment NAME or --study NAME.")
    client = MlflowClient(tracking_uri)
    ids = _experiment_ids(client, experiments, tracking_uri) if experiments else [e.experiment_id for e in client.search_experiments()]
    summary: Optional[StudySummary] = None
    if study:
        runs = _all_runs(client, ids, f"tags.`{layout.TAG_STUDY}` = {_quote(study)}")
        if not runs:
            parents = _all_runs(client, ids, f"tags.`{layout.TAG_ROLE}` = 'study'")
            known = sorted({r.data.tags.get(layout.TAG_STUDY, "") for r in parents} - {""})
            where = f"experiment {', '.join(experiments)}" if experiments else tracking_uri
            hint = suggestion(study, known) or (f" Studies there: {', '.join(known[:12])}." if known else " No sweep was tracked there.")
            raise ConfigError("--study", f"no study {study!r} in {where}.", hint)
        parents = [r for r in runs if r.data.tags.get(layout.TAG_ROLE) == "study"]
        runs = [r for r in runs if r.data.tags.get(layout.TAG_ROLE) != "study"]
        parent = parents[0] if parents else None
        trial_params = sorted({k[len(layout.TAG_PARAM):] for r in runs for k in r.data.tags if k.startswith(layout.TAG_PARAM)})
        summary = StudySummary(name=study, parent_run_id=parent.info.run_id if parent else None,
                               direction=(parent.data.params.get("sweep/direction", "maximize") if parent else "maximize"),
                               objective=layout.OBJECTIVE, params=trial_params)
        where = f"study {study!r}"
    else:
        runs = [r for r in _all_runs(client, ids) if r.data.tags.get(layout.TAG_ROLE) != "study"]
        where = f"experiment {', '.join(experiments)}"
    runs = _select(runs, run_ids, where)
    if not runs:
        raise ConfigError("--study" if study else "--experiment", f"{where} has no runs to report.", "Run a recipe with --tracker mlflow first.")
    summaries = [_summarize(r) for r in runs]
    if not run_ids:  # trials in trial order, other runs by start time
        summaries.sort(key=lambda s: (s.trial_number is None, s.trial_number or 0, s.start_time))

    keys = {k for s in summaries for k in s.final}
    plotted = [k for section in layout.sections(keys) for k in section.keys]
    histories: dict[str, dict[str, dict[str, list]]] = {}
    for key in plotted:
        histories[key] = {}
        for s in summaries:
            if key in s.final:
                points = client.get_metric_history(s.run_id, key)
                histories[key][s.run_id] = {"step": [int(m.step) for m in points], "value": [float(m.value) for m in points]}
    names = [e.name for e in (client.get_experiment(i) for i in sorted({s.experiment_id for s in summaries}))]
    title = f"study {study}" if study else ", ".join(experiments)
    return ReportData(tracking_uri=tracking_uri, title=title, experiments=names, runs=summaries, histories=histories, study=summary)
