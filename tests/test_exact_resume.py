"""Kill-and-resume through the CLI, as a preempted user would: the resumed run ends bitwise equal.

Each case trains a tiny recipe twice as a subprocess: once uninterrupted, once killed with SIGKILL at
a random moment after its first mid-epoch checkpoint and then re-run with ``--resume auto``. The
final weights (every tensor of ``last.ckpt``'s state dict, and the optimizer states) must be equal
bit for bit, and so must the MLflow metric history of the run (continued, not duplicated).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240

#: Tiny configs: 10 batches per epoch, 2 epochs, a checkpoint every 3 optimizer steps.
TINY = {
    "dino": ["data.subset=320", "data.batch_size=32", "model.cnn_widths=(8, 16)", "model.out_dim=64"],
    "lejepa": ["data.subset=320", "data.batch_size=32", "model.depth=1", "lejepa.num_slices=64", "lejepa.n_local=2"],
    "ijepa": ["data.subset=320", "data.batch_size=32", "model.depth=1", "model.predictor_depth=1"],
}
COMMON = ["trainer.max_epochs=2", "eval.baseline_inits=1", "trainer.checkpoint_every_n_steps=3"]


def _command(recipe: str, out: Path, extra: list[str], torchrun: bool = False) -> list[str]:
    args = ["-m", "sptrack.run", str(ROOT / "recipes" / f"{recipe}.py"), *TINY[recipe], *COMMON,
            f"trainer.output_dir={out}", *extra]
    if torchrun:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return [sys.executable, *args]


def _env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _run_beside(cmd: list[str], cwd: Path):
    """Start the uninterrupted reference run while the test works on another (one thread each, own folder; the
    interruptions wait on checkpoints, not on time); returns the call that waits for it and checks its exit."""
    log = open(cwd / "stderr.txt", "w")
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=log)

    def wait() -> None:
        proc.wait(timeout=TIMEOUT_S)
        log.close()
        assert proc.returncode == 0, (cwd / "stderr.txt").read_text()[-3000:]

    return wait


def _progress_steps(ckpt_dir: Path) -> list[int]:
    return [int(p.stem.split("=")[1]) for p in ckpt_dir.glob("progress-step=*.ckpt")]


def _run_and_kill(cmd: list[str], cwd: Path, ckpt_dir: Path, rng: random.Random) -> str:
    """Start ``cmd``, wait for a progress checkpoint at a randomly chosen step (3..15 of 20), SIGKILL its
    process group a random instant later: a moment inside the run however fast the machine is."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    target = rng.choice([3, 6, 9, 12, 15])
    deadline = time.monotonic() + TIMEOUT_S
    while not any(step >= target for step in _progress_steps(ckpt_dir)):
        assert proc.poll() is None, f"the run ended before its step-{target} checkpoint: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.1))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode != 0, "the run finished before it could be killed; kill earlier"
    return sorted(p.name for p in ckpt_dir.glob("*.ckpt"))


def _final(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    sa, sb = a["state_dict"], b["state_dict"]
    assert sorted(sa) == sorted(sb)
    differing = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differing, f"{len(differing)} of {len(sa)} tensors differ, e.g. {differing[:5]}: " + ", ".join(
        f"{k}: {(sa[k].float() - sb[k].float()).abs().max().item():.3g}" for k in differing[:3])
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for key, state in opt_a["state"].items():
            for name, value in state.items():
                if torch.is_tensor(value):
                    assert torch.equal(value, opt_b["state"][key][name]), f"optimizer state {key}.{name}"


def _kill_and_resume(recipe: str, tmp_path: Path, seed: int, extra: list[str] = (), torchrun: bool = False):
    rng = random.Random(seed)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir()
    broken.mkdir()
    reference = _command(recipe, straight / "runs", list(extra), torchrun)
    if torchrun:  # two ranks already fill the cores
        _run(reference, straight)
    else:
        wait_reference = _run_beside(reference, straight)
    cmd = _command(recipe, broken / "runs", list(extra), torchrun)
    left = _run_and_kill(cmd, broken, broken / "runs" / recipe / "version_0" / "checkpoints", rng)
    assert not (broken / "runs" / recipe / "version_0" / "checkpoints" / "epoch=1-step=20.ckpt").exists(), left
    resumed = _run([*cmd, "--resume", "auto"], broken)
    if not torchrun:
        wait_reference()
    assert not (broken / "runs" / recipe / "version_1").exists(), "the resumed job must continue in version_0"
    a, b = _final(straight / "runs" / recipe / "version_0"), _final(broken / "runs" / recipe / "version_0")
    assert a["global_step"] == 20
    _assert_bitwise_equal(a, b)
    return resumed


# DINO (multi-crop views, EMA teacher, centre) and I-JEPA (block masks, EMA teacher, position centre) between them
# hold every kind of state a resume must restore; LeJEPA's views are DINO's and its SIGReg directions are seeded by
# the step. DINO is killed and resumed in one process by the last-batch test below and under DDP above.
def test_sigkill_then_resume_auto_is_bitwise_exact(tmp_path):
    _kill_and_resume("ijepa", tmp_path, seed=11, extra=["ijepa.center_targets=True"])


def _metric_history(db: Path) -> dict:
    """Every metric of the only MLflow run in ``db``: {key: [(step, value), ...]} in step order."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, f"{len(runs)} runs in {db}"
    run = runs[0]
    history = {}
    for key in run.data.metrics:
        points = client.get_metric_history(run.info.run_id, key)
        history[key] = sorted((p.step, p.value) for p in points)
    return history


def test_sigterm_checkpoints_at_a_boundary_and_the_tracked_run_continues(tmp_path):
    """SIGTERM: a checkpoint at the next boundary, exit status 143; the resumed job continues the same
    MLflow run, whose metric history equals the uninterrupted run's (no point lost or repeated)."""
    recipe = "dino"
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir()
    broken.mkdir()
    tracked = ["--tracker", "mlflow", "trainer.log_every_n_steps=1", "trainer.checkpoint_every_n_steps=1000",
               "trainer.max_epochs=4"]
    wait_reference = _run_beside(_command(recipe, straight / "runs", [*tracked, f"tracker.uri=sqlite:///{straight}/mlflow.db"]), straight)
    cmd = _command(recipe, broken / "runs", [*tracked, f"tracker.uri=sqlite:///{broken}/mlflow.db"])
    proc = subprocess.Popen(cmd, cwd=broken, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt_dir = broken / "runs" / recipe / "version_0" / "checkpoints"
    deadline = time.monotonic() + TIMEOUT_S
    while not (ckpt_dir / "last.ckpt").exists():  # the end of epoch 0
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "--resume auto" in err
    progress = sorted(ckpt_dir.glob("progress-step=*.ckpt"))
    assert len(progress) == 1, sorted(p.name for p in ckpt_dir.iterdir())
    stopped_at = int(progress[0].stem.split("=")[1])
    assert 10 < stopped_at < 40 and stopped_at % 10  # after epoch 0, inside an epoch
    assert torch.load(progress[0], weights_only=False)["global_step"] == stopped_at
    _run([*cmd, "--resume", "auto"], broken)
    wait_reference()
    _assert_bitwise_equal(_final(straight / "runs" / recipe / "version_0"), _final(broken / "runs" / recipe / "version_0"))
    expected, got = _metric_history(straight / "mlflow.db"), _metric_history(broken / "mlflow.db")
    # MLflow's system/* metrics are samples every few seconds of wall time: a run slowed by a loaded machine
    # has some where a quicker one has none. They are not training state, so they are left out here.
    expected, got = ({k: v for k, v in h.items() if not k.startswith("system/")} for h in (expected, got))
    assert sorted(got) == sorted(expected)
    assert len(expected["train/loss"]) == 40
    for key in expected:
        if key.startswith("final/") or key in ("wall_time_s",):
            continue
        assert got[key] == expected[key], key


def test_two_process_ddp_sigkill_then_resume_is_bitwise_exact(tmp_path):
    """The same under torchrun with 2 gloo processes: each rank's generators are restored as its own.

    Bitwise, not to a tolerance: with two ranks gloo sums the same two numbers in the same order
    in both runs, so nothing in the reduction depends on where the run was interrupted."""
    _kill_and_resume("dino", tmp_path, seed=7, extra=["--strategy", "ddp", "data.batch_size=16"], torchrun=True)


def test_step_checkpoint_on_the_last_batch_of_an_epoch_resumes_exactly(tmp_path):
    """Step checkpoints that fall on an epoch's last batch (10 batches per epoch, every 10 steps) are
    taken before the epoch's end hooks; the resume must start the next epoch, not replay this one."""
    _kill_and_resume("dino", tmp_path, seed=3, extra=["trainer.checkpoint_every_n_steps=10"])


def test_time_based_checkpoints_keep_only_the_newest(tmp_path):
    """``trainer.checkpoint_every_minutes``: due at every boundary here; one progress file remains, the last step's."""
    _run(_command("dino", tmp_path / "runs", ["trainer.checkpoint_every_minutes=1e-6", "trainer.checkpoint_every_n_steps=None",
                                              "trainer.keep_checkpoints=1"]), tmp_path)
    names = sorted(p.name for p in (tmp_path / "runs" / "dino" / "version_0" / "checkpoints").iterdir())
    assert names == ["epoch=1-step=20.ckpt", "last.ckpt", "progress-step=20.ckpt"]


def test_resumable_sampler_order_and_skip():
    """Epoch e is randperm(seed + e), the same for every fresh sampler; resume skips exactly the samples done."""
    from sptrack.data import ResumableSampler

    data = list(range(23))
    sampler = ResumableSampler(data, seed=5)
    sampler.set_epoch(3)
    expected = torch.randperm(23, generator=torch.Generator().manual_seed(8)).tolist()
    assert list(sampler) == expected and len(sampler) == 23
    fresh = ResumableSampler(data, seed=5)
    fresh.resume(3, samples_done=7)
    assert list(fresh) == expected[7:]
    assert list(fresh) == expected  # the skip applies to one iteration only
    assert list(ResumableSampler(data, shuffle=False)) == data


@pytest.mark.parametrize("override,message", [
    ("trainer.checkpoint_every_n_steps=0", "error: trainer.checkpoint_every_n_steps: must be an integer >= 1, got 0."),
    ("trainer.checkpoint_every_minutes=-1", "error: trainer.checkpoint_every_minutes: must be > 0 or None, got -1."),
    ("trainer.keep_checkpoints=0", "error: trainer.keep_checkpoints: must be an integer >= 1, got 0."),
])
def test_bad_checkpoint_settings_are_one_line_errors(override, message, tmp_path, capsys):
    from sptrack.run.cli import main

    assert main([str(ROOT / "recipes" / "dino.py"), override, f"trainer.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("resume,message", [
    ("autoo", "error: --resume: no checkpoint at 'autoo'. Did you mean 'auto'?"),
    ("missing/last.ckpt", "error: --resume: no checkpoint at 'missing/last.ckpt'. Give an existing checkpoint path, or 'auto'."),
])
def test_resume_of_a_missing_checkpoint_is_a_one_line_error(resume, message, tmp_path, capsys):
    from sptrack.run.cli import main

    assert main([str(ROOT / "recipes" / "dino.py"), "--resume", resume, f"trainer.output_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]
    assert not any(tmp_path.iterdir())
