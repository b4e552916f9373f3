"""Bad input through the CLI, run as a user runs it (a subprocess in an empty folder).

Every case must: exit with status 2, print exactly one ``error: <key>: ...`` line naming the key the
user got wrong (with the expected close match where there is one), print no traceback, and leave
nothing behind in the folder it ran in (no run directory, no study, no store).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from track_helpers.mlflow_server import free_port

ROOT = Path(__file__).resolve().parents[1]
DINO = str(ROOT / "recipes" / "dino.py")
IJEPA = str(ROOT / "recipes" / "ijepa.py")
TINY_SWEEP = str(ROOT / "tests" / "tune_helpers" / "tiny_recipe.py")
#: A few steps of DINO on synthetic images, for the cases that only fail once training starts.
SHORT = ["data.dataset=synthetic", "data.subset=64", "data.batch_size=32", "model.cnn_widths=(8, 16)", "model.embed_dim=32",
         "model.out_dim=64", "model.head_hidden_dim=64", "model.bottleneck_dim=16", "dino.n_local=2", "eval.baseline_inits=1",
         "--max-epochs", "1"]
SECRET = "s3cr@t/pa:ss#w0rd"


def _write_recipes(folder: Path) -> None:
    (folder / "garbage.ckpt").write_text("not a checkpoint")
    (folder / "a_dir").mkdir()
    (folder / "empty").mkdir()
    (folder / "a_file").write_text("x")
    (folder / "half" / "train" / "cats").mkdir(parents=True)  # a train/ folder without val/
    (folder / "half" / "train" / "cats" / "a.jpg").write_text("x")
    (folder / "flat" / "cats").mkdir(parents=True)  # a ROOT/<class>/ folder (only names are checked before training)
    (folder / "flat" / "cats" / "a.jpg").write_text("x")
    (folder / "syntax.py").write_text("from sptrack.recipe.config import RecipeConfig\n\nclass Config(RecipeConfig)\n    pass\n")
    (folder / "boom.py").write_text(
        "from dataclasses import dataclass\n\nfrom sptrack.recipe.config import RecipeConfig\n\n\n"
        "@dataclass\nclass Config(RecipeConfig):\n    pass\n\n\n"
        "def build(cfg):\n    widths = []\n    return widths[3]\n"
    )


# (argv, key the error line names, a fragment it must hold or None). {port} is a closed local port.
CASES = [
    # command line
    ([DINO, "--max-epoch", "3", "--dry-run"], "--max-epoch", "Did you mean '--max-epochs'"),
    ([DINO, "--strategy", "ddpp", "--dry-run"], "--strategy", "Did you mean 'ddp'"),
    ([DINO, "--tracker", "mlfow", "--dry-run"], "--tracker", "Did you mean 'mlflow'"),
    ([DINO, "--max-epochs", "abc", "--dry-run"], "--max-epochs", "invalid int value"),
    ([DINO, "--max-epochs", "0", "--dry-run"], "--max-epochs", ">= 1"),
    ([DINO, "--devices", "0", "--dry-run"], "--devices", None),
    ([DINO, "--accelerator", "tpu9", "--dry-run"], "--accelerator", "Did you mean 'tpu'"),
    ([DINO, "--seed", "-1", "--dry-run"], "--seed", ">= 0"),
    ([DINO, "trainer.max_epochs", "--dry-run"], "trainer.max_epochs", "key=value"),
    ([DINO, "--prune-every", "5"], "--prune-every", "--sweep"),
    ([DINO, "--sweep", "--resume", "auto", "--dry-run"], "--resume", None),
    # recipe files
    (["dinno", "--dry-run"], "recipe", "Did you mean 'dino'"),
    (["syntax.py", "--dry-run"], "recipe syntax.py:3", "SyntaxError"),
    (["boom.py", "--dry-run"], "recipe boom.py:13", "IndexError"),
    # trainer.*
    ([DINO, "trainer.max_epoch=3", "--dry-run"], "trainer.max_epoch", "Did you mean 'trainer.max_epochs'"),
    ([DINO, "trainer.max_epochs=-5", "--dry-run"], "trainer.max_epochs", ">= 1"),
    ([DINO, "trainer.max_epochs=abc", "--dry-run"], "trainer.max_epochs", "expected int"),
    ([DINO, "trainer.max_steps=-2", "--dry-run"], "trainer.max_steps", None),
    ([DINO, "trainer.accumulate_grad_batches=0", "--dry-run"], "trainer.accumulate_grad_batches", ">= 1"),
    ([DINO, "trainer.gradient_clip_val=-1", "--dry-run"], "trainer.gradient_clip_val", ">= 0"),
    ([DINO, "trainer.gradient_clip_algorithm=l3", "--dry-run"], "trainer.gradient_clip_algorithm", "norm, value"),
    ([DINO, "trainer.precision=fp17", "--dry-run"], "trainer.precision", None),
    ([DINO, "trainer.precision=16-mixd", "--dry-run"], "trainer.precision", "Did you mean '16-mixed'"),
    ([DINO, "trainer.log_every_n_steps=0", "--dry-run"], "trainer.log_every_n_steps", ">= 1"),
    ([DINO, "trainer.check_val_every_n_epoch=0", "--dry-run"], "trainer.check_val_every_n_epoch", ">= 1"),
    ([DINO, "trainer.limit_train_batches=0", "--dry-run"], "trainer.limit_train_batches", None),
    ([DINO, "trainer.limit_val_batches=1.5", "--dry-run"], "trainer.limit_val_batches", "(0, 1]"),
    ([DINO, "trainer.seed=4294967296", "--dry-run"], "trainer.seed", "at most"),
    ([DINO, "trainer.output_dir=a_file", "--dry-run"], "trainer.output_dir", "not a directory"),
    ([DINO, "trainer.checkpoint_every_n_steps=0", "--dry-run"], "trainer.checkpoint_every_n_steps", None),
    ([DINO, "trainer.keep_checkpoints=0", "--dry-run"], "trainer.keep_checkpoints", None),
    ([DINO, "trainer.strategy=fsdp", "--dry-run"], "trainer.strategy", "Did you mean 'fsdp2'"),
    ([DINO, "tracker.kind=mlfow", "--dry-run"], "tracker.kind", "Did you mean 'mlflow'"),
    ([DINO, "eval.baseline_inits=0", "--dry-run"], "eval.baseline_inits", ">= 1"),
    # data.*
    ([DINO, "data.batch_size=0", "--dry-run"], "data.batch_size", ">= 1"),
    ([DINO, "data.val_batch_size=-1", "--dry-run"], "data.val_batch_size", ">= 1"),
    ([DINO, "data.num_workers=-1", "--dry-run"], "data.num_workers", ">= 0"),
    ([DINO, "data.subset=0", "--dry-run"], "data.subset", ">= 1"),
    ([DINO, "data.validation_fraction=1.0", "--dry-run"], "data.validation_fraction", "[0, 1)"),
    ([DINO, "data.dataset=cifar1000", "--dry-run"], "data.dataset", "mnist5k"),
    ([DINO, "data.dataset=mnist6k", "--dry-run"], "data.dataset", "Did you mean 'mnist5k'"),
    ([DINO, "data.dataset=image_folder", "--dry-run"], "data.root", "data.root=PATH"),
    ([DINO, "data.dataset=image_folder", "data.root=nope", "--dry-run"], "data.root", "not a directory"),
    ([DINO, "data.dataset=image_folder", "data.root=empty", "--dry-run"], "data.root", "no class sub-directories"),
    ([DINO, "data.dataset=image_folder", "data.root=half", "--dry-run"], "data.root", "has a 'train' but no 'val' sub-directory"),
    ([DINO, "data.dataset=image_folder", "data.root=half", "data.heldout_fraction=1.0", "--dry-run"], "data.heldout_fraction", "(0, 1)"),
    ([DINO, "data.root=empty", "--dry-run"], "data.root", "image_folder"),
    ([DINO, "preset=vit_s16", "--dry-run"], "preset", "Did you mean 'vit_s16_imagenet'"),
    ([DINO, "data.crop_from=orig", "--dry-run"], "data.crop_from", "Did you mean 'original'"),
    ([DINO, "data.dataset=shards", "data.root=nope", "--dry-run"], "data.root", "does not exist"),
    ([DINO, "data.dataset=shards", "data.root=empty", "data.subset=64", "--dry-run"], "data.subset", "write a smaller shard set"),
    ([IJEPA, "ijepa.sigreg_on=token", "--dry-run"], "ijepa.sigreg_on", "Did you mean 'tokens'"),
    ([IJEPA, "ijepa.target_placement=contnet", "--dry-run"], "ijepa.target_placement", "Did you mean 'content'"),
    ([IJEPA, "ijepa.sigreg_weight=1.5", "--dry-run"], "ijepa.sigreg_weight", "[0, 1)"),
    ([IJEPA, "ijepa.views=0", "--dry-run"], "ijepa.views", "integer >= 1"),
    ([IJEPA, "preset=paper", "ijepa.projector_dim=16", "ijepa.sigreg_on=tokens", "--dry-run"], "ijepa.projector_dim", "nothing reads the projection"),
    ([IJEPA, "ijepa.evaluate=contxt", "--dry-run"], "ijepa.evaluate", "Did you mean 'context'"),
    ([IJEPA, "ijepa.prediction_weight=0", "ijepa.invariance_weight=0", "--dry-run"], "ijepa.prediction_weight", "only SIGReg would train"),
    ([IJEPA, "ijepa.regularise=crops", "--dry-run"], "ijepa.regularise", "Did you mean 'crop'"),
    ([IJEPA, "ijepa.invariance_weight=0", "ijepa.sigreg_weight=0", "--dry-run"], "ijepa.local_views", "neither invariance nor SIGReg"),
    ([IJEPA, "ijepa.flip_p=1.5", "--dry-run"], "ijepa.flip_p", "must be in [0, 1]"),
    ([DINO, "dino.koleo_weight=-0.1", "--dry-run"], "dino.koleo_weight", "finite number >= 0"),
    ([DINO, "model.cnn_depths=(2, 2)", "--dry-run"], "model.cnn_depths", "for each of the 3 stages"),
    ([DINO, "model.cnn_out_dim=0", "--dry-run"], "model.cnn_out_dim", "integer >= 1"),
    ([DINO, "model.backbone=vit", "data.dataset=image_folder", "data.root=flat", "data.image_size=30", "--dry-run"], "data.image_size",
     "30 is not a multiple of model.patch_size=4. Use e.g. data.image_size=28 or 32."),
    # optim.*
    ([DINO, "optim.head.lr=0", "--dry-run"], "optim.head.lr", "> 0"),
    ([DINO, "optim.head.lr=-1e-3", "--dry-run"], "optim.head.lr", "> 0"),
    ([DINO, "optim.head.weight_decay=-0.1", "--dry-run"], "optim.head.weight_decay", ">= 0"),
    ([DINO, "optim.head.betas=(0.9,)", "--dry-run"], "optim.head.betas", "two numbers"),
    ([DINO, "optim.head.betas=(0.9, 1.5)", "--dry-run"], "optim.head.betas", "two numbers"),
    ([DINO, "optim.head.momentum=0.9", "--dry-run"], "optim.head.momentum", "AdamW has no argument"),
    ([DINO, "optim.head.type=Adamm", "--dry-run"], "optim.head.type", "Did you mean 'Adam'"),
    ([DINO, "optim.head.scheduler=Cosine", "--dry-run"], "optim.head.scheduler", "Did you mean 'CosineAnnealingLR'"),
    ([DINO, "optim.head.interval=epochs", "--dry-run"], "optim.head.interval", "Did you mean 'epoch'"),
    ([DINO, "optim.head.frequency=0", "--dry-run"], "optim.head.frequency", ">= 1"),
    ([DINO, "optim.head.warmup_fraction=1.5", "--dry-run"], "optim.head.warmup_fraction", "[0, 1)"),
    ([DINO, "optim.head.modules=(", "--dry-run"], "optim.head.modules", "invalid regex"),
    ([DINO, "optim.head.modules=studnt.head", "--dry-run"], "optim.head.modules", "Did you mean 'student.head'"),
    ([DINO, "optim.heed.lr=1", "--dry-run"], "optim.heed", "Did you mean 'optim.head"),
    # --resume
    ([DINO, "--resume", "nope.ckpt"], "--resume", "no checkpoint"),
    ([DINO, "--resume", "a_dir"], "--resume", "is a directory"),
    ([DINO, "--resume", "garbage.ckpt"], "--resume", "not a checkpoint"),
    # sweeps
    ([DINO, "--sweep", "--trials", "0", "--dry-run"], "--trials", ">= 1"),
    ([DINO, "--sweep", "--sampler", "tpee", "--dry-run"], "--sampler", "Did you mean 'tpe'"),
    ([DINO, "--sweep", "search_space={'optim.*.lr': 'log-uniform 1e-5...1e-2'}", "--dry-run"],
     "search_space['optim.*.lr'] (optim.backbone.lr)", "KIND LOW..HIGH"),
    ([DINO, "--sweep", "--storage", f"postgresql://user:{SECRET}@127.0.0.1:{{port}}/optuna", "--trials", "1"], "--storage", "user:***@"),
    ([DINO, "--sweep", "--storage", f"mysql+pymysql://user:{SECRET}@127.0.0.1:{{port}}/optuna", "--trials", "1"], "--storage",
     "needs the database driver 'pymysql', which is not installed. Install it (pip install pymysql)"),
    ([TINY_SWEEP, "--sweep", "--trials", "3", "--objective", "eval/knn_accc"], "--objective", "Did you mean 'eval/knn_acc'"),
    # found once training starts
    ([DINO, *SHORT, "optim.head.scheduler=ReduceLROnPlateau"], "optim.head.monitor", "'val_loss'"),
    ([DINO, *SHORT, "--tracker", "mlflow", "tracker.uri=http://127.0.0.1:{port}"], "tracker.uri", "unreachable"),
    ([DINO, *SHORT, "--tracker", "mlflow", f"tracker.uri=mysql+pymysql://u:{SECRET}@127.0.0.1:{{port}}/db"], "tracker",
     "mysql+pymysql://u:***@127.0.0.1"),
]


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# Runs `python -m sptrack.run`'s main() on each (argv, folder) case read from stdin, in that folder,
# with its own stdout/stderr, and prints their outcomes as JSON: one interpreter for many --dry-run
# cases (they stop before anything is built) instead of one start-up (imports) per case.
_DRIVER = """
import contextlib, io, json, os, sys
from sptrack.run.cli import main
out = []
for argv, folder in json.load(sys.stdin):
    os.chdir(folder)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
    out.append([code, stdout.getvalue(), stderr.getvalue()])
sys.__stdout__.write(json.dumps(out))
"""


def _prepare(argv: list[str], folder: Path) -> tuple[list[str], set[str]]:
    folder.mkdir(parents=True)
    _write_recipes(folder)
    return [a.replace("{port}", str(free_port())) for a in argv], _listing(folder)  # a free port: nothing listens there


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("SPTRACK_TRACEBACK", None)
    return env


def _run_case(argv: list[str], folder: Path) -> tuple[subprocess.CompletedProcess, set[str], set[str]]:
    """One case in its own empty folder (plus the test files), in its own interpreter: the process, the listing before and after."""
    argv, before = _prepare(argv, folder)
    proc = subprocess.run([sys.executable, "-m", "sptrack.run", *argv], cwd=folder, env=_env(), capture_output=True, text=True, timeout=300)
    return proc, before, _listing(folder)


def _run_dry_cases(cases: list[tuple[list[str], Path]]) -> list[tuple[subprocess.CompletedProcess, set[str], set[str]]]:
    """Cases that stop before building anything, each in its own folder, one after another in one interpreter (see ``_DRIVER``)."""
    import json

    prepared = [_prepare(argv, folder) for argv, folder in cases]
    payload = json.dumps([[argv, str(folder)] for (argv, _), (_, folder) in zip(prepared, cases)])
    proc = subprocess.run([sys.executable, "-c", _DRIVER], input=payload, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    return [(subprocess.CompletedProcess(argv, code, out, err), before, _listing(folder))
            for (code, out, err), (argv, before), (_, folder) in zip(results, prepared, cases)]


def _stops_before_building(argv: list[str]) -> bool:
    """Cases that fail in the command line's own checks (no sweep started, no training): they share interpreters."""
    return "--dry-run" in argv or ("--sweep" not in argv and SHORT[0] not in argv)


class _Outcomes:
    """Each case's outcome, computed when a test first asks for it. The cases that stop before building anything run
    together, in two interpreters (one per core), at the first such request; every other case (sweeps, training) runs
    in its own interpreter when its own test does. Under pytest-xdist a module's cases are split between the workers,
    so computing them all up front would run every slow case on both."""

    def __init__(self, root: Path):
        self.root = root
        self.results: dict[int, tuple] = {}
        self.dry_failure: BaseException | None = None  # raised again for every dry case instead of rerunning them all

    def __getitem__(self, index: int) -> tuple:
        if index not in self.results:
            argv = CASES[index][0]
            if _stops_before_building(argv):
                if self.dry_failure is None:
                    try:
                        self._run_all_dry()
                    except BaseException as failure:
                        self.dry_failure = failure
                if self.dry_failure is not None:
                    raise self.dry_failure
            else:
                self.results[index] = _run_case(argv, self.root / f"case-{index}")
        return self.results[index]

    def _run_all_dry(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        dry = [i for i, (argv, _, _) in enumerate(CASES) if _stops_before_building(argv)]
        halves = [dry[0::2], dry[1::2]]
        with ThreadPoolExecutor(max_workers=2) as pool:
            batches = [pool.submit(_run_dry_cases, [(CASES[i][0], self.root / f"case-{i}") for i in half]) for half in halves]
            for half, batch in zip(halves, batches):
                self.results.update(zip(half, batch.result()))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> _Outcomes:
    return _Outcomes(tmp_path_factory.mktemp("cases"))


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{i}:{c[1]}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(index, outcomes):
    _, key, fragment = CASES[index]
    proc, before, after = outcomes[index]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith(f"error: {key}: "), errors[0]
    if fragment is not None:
        assert fragment in errors[0], errors[0]
    assert SECRET not in proc.stdout + proc.stderr
    assert after == before  # no run directory, study, store or checkpoint left


def test_traceback_flag_and_variable_show_the_stack(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("SPTRACK_TRACEBACK", None)
    for extra, variables in (["--traceback"], {}), ([], {"SPTRACK_TRACEBACK": "1"}):
        proc = subprocess.run([sys.executable, "-m", "sptrack.run", DINO, "trainer.max_epochs=-5", "--dry-run", *extra],
                              cwd=tmp_path, env={**env, **variables}, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr
        assert "sptrack.errors.ConfigError: trainer.max_epochs: must be an integer >= 1, got -5." in proc.stderr


def test_dry_run_of_a_sweep_masks_the_storage_password(tmp_path):
    url = f"postgresql://user:{SECRET}@db.example:5432/optuna"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "sptrack.run", DINO, "--sweep", "--storage", url, "--dry-run"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "in postgresql://user:***@db.example:5432/optuna:" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr and "s3cr" not in proc.stdout + proc.stderr


def test_precision_and_accelerator_names_are_lightnings():
    """The names the config accepts are exactly the ones Lightning's Trainer accepts (checked before it exists)."""
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS
    from lightning.pytorch.accelerators import AcceleratorRegistry

    from sptrack.recipe.validate import ACCELERATORS, PRECISIONS

    assert set(PRECISIONS) == set(typing.get_args(_PRECISION_INPUT_STR)) | set(typing.get_args(_PRECISION_INPUT_STR_ALIAS))
    assert set(ACCELERATORS) == set(AcceleratorRegistry.available_accelerators()) | {"auto", "gpu"}


def test_a_machine_without_the_asked_accelerator_is_lightnings_check_in_one_line(tmp_path):
    """``--accelerator cuda`` on a machine without CUDA: Lightning's MisconfigurationException, as one line."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("SPTRACK_TRACEBACK", None)
    proc = subprocess.run([sys.executable, "-m", "sptrack.run", DINO, *SHORT, "--accelerator", "cuda"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith("error: trainer: ") and "CUDA" in errors[0], errors
    assert not any(tmp_path.iterdir())


def test_a_dashboard_without_its_extra_names_the_pip_install(tmp_path):
    """The dashboard packages are an extra: without them, one line naming what to install (plotly blocked here)."""
    code = ("import sys; sys.modules['plotly'] = None; from sptrack.dashboard.__main__ import main; "
            "sys.exit(main(['report', '--tracking-uri', 'sqlite:///x.db', '--experiment', 'e', '--out', 'r.html']))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: report: needs the package 'plotly', which is not installed. Install the dashboard extra: pip install 'sptrack[dashboard]'.")
    assert not any(tmp_path.iterdir())
