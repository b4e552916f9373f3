"""Launching: devices/num_nodes from torchrun or SLURM, contradictions, real torchrun launches, the group's end.

The unit tests resolve from fake environment dicts; the launch tests run the README's commands (with
a tiny DINO) as subprocesses: one node with two processes, two "nodes" of one process each started
concurrently on this machine with separate folders, a sweep, and the process group after training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist.launch import clean_env, free_port, run
from sptrack.errors import ConfigError
from sptrack.parallel.launch import detect, resolve_devices
from sptrack.run.cli import main
from sptrack.tune.distributed import needs_relaunch

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]  # what the `torchrun` script runs
# The test_run_cli tiny DINO on 128 synthetic images, one epoch of 32-image batches per rank.
TINY = [
    "data.dataset=synthetic", "data.subset=128", "data.batch_size=32", "data.val_batch_size=250", "model.embed_dim=32",
    "model.depth=1", "model.num_heads=2", "model.out_dim=64", "model.head_hidden_dim=64", "model.bottleneck_dim=16",
    "dino.n_local=2", "trainer.max_epochs=1", "trainer.log_every_n_steps=1", "eval.baseline_inits=1",
]
WEIGHTS_RECIPE = ROOT / "tests" / "launch_helpers" / "dino_weights.py"
TINY_SWEEP_RECIPE = ROOT / "tests" / "tune_helpers" / "tiny_recipe.py"


def torchrun_env(world: int, local: int, groups: int | None = None) -> dict:
    """What torchrun sets (the variables launch.py reads)."""
    env = {"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(local), "RANK": "0", "LOCAL_RANK": "0"}
    if groups is not None:
        env["GROUP_WORLD_SIZE"] = str(groups)
    return env


def slurm_env(ntasks: int, per_node: int | None, nnodes: int, job_name: str = "train") -> dict:
    env = {"SLURM_NTASKS": str(ntasks), "SLURM_NNODES": str(nnodes), "SLURM_JOB_NAME": job_name, "SLURM_PROCID": "0"}
    if per_node is not None:
        env["SLURM_NTASKS_PER_NODE"] = str(per_node)
    return env


# ---------------------------------------------------------------------------------- resolution
@pytest.mark.parametrize("env, expected", [
    ({}, (1, 1)),
    (torchrun_env(2, 2, 1), (2, 1)),
    (torchrun_env(8, 4, 2), (4, 2)),
    (torchrun_env(8, 4), (4, 2)),  # num_nodes = WORLD_SIZE // LOCAL_WORLD_SIZE without GROUP_WORLD_SIZE
    (slurm_env(8, 4, 2), (4, 2)),
    (slurm_env(1, None, 1), (1, 1)),
    (slurm_env(8, 4, 2, job_name="bash"), (1, 1)),  # interactive: Lightning ignores SLURM, so do we
    (slurm_env(8, 4, 2, job_name="interactive"), (1, 1)),
    ({**slurm_env(4, 4, 1), **torchrun_env(2, 2, 1)}, (2, 1)),  # torchrun inside a SLURM job wins, as in Lightning
])
def test_devices_and_nodes_come_from_the_launcher_when_not_given(env, expected):
    assert resolve_devices(None, None, env) == expected
    assert resolve_devices(*expected, env) == expected  # resolved values resolve to themselves


def test_given_values_are_kept_without_a_launcher_and_checked_under_one():
    assert resolve_devices(3, 2, {}) == (3, 2)
    assert resolve_devices(2, None, {}) == (2, 1)
    assert resolve_devices(4, None, torchrun_env(8, 4, 2)) == (4, 2)
    assert resolve_devices(None, 2, slurm_env(8, 4, 2)) == (4, 2)


@pytest.mark.parametrize("args, env, key, message", [
    ((3, None), torchrun_env(2, 2, 1), "--devices",
     "--devices: is 3 but torchrun started 2 processes per node (LOCAL_WORLD_SIZE=2). Drop --devices or make them agree."),
    ((None, 1), torchrun_env(4, 2, 2), "trainer.num_nodes",
     "trainer.num_nodes: is 1 but torchrun started 2 nodes (GROUP_WORLD_SIZE=2). Drop trainer.num_nodes or make them agree."),
    ((None, 3), torchrun_env(4, 2), "trainer.num_nodes",
     "trainer.num_nodes: is 3 but torchrun started 2 nodes (WORLD_SIZE=4 / LOCAL_WORLD_SIZE=2). Drop trainer.num_nodes or make them agree."),
    ((2, None), slurm_env(4, 4, 1), "--devices",
     "--devices: is 2 but SLURM started 4 tasks per node (SLURM_NTASKS_PER_NODE=4). Drop --devices or make them agree."),
    ((None, 1), slurm_env(8, 4, 2), "trainer.num_nodes",
     "trainer.num_nodes: is 1 but SLURM started 2 nodes (SLURM_NNODES=2). Drop trainer.num_nodes or make them agree."),
    ((0, None), {}, "--devices", "--devices: must be an int >= 1, got 0. Drop --devices to take it from the launcher (else 1)."),
    ((-2, None), {}, "--devices", "--devices: must be an int >= 1, got -2. Drop --devices to take it from the launcher (else 1)."),
    ((None, 0), {}, "trainer.num_nodes", "trainer.num_nodes: must be an int >= 1, got 0. Drop trainer.num_nodes to take it from the launcher (else 1)."),
    ((True, None), {}, "--devices", "--devices: must be an int >= 1, got True. Drop --devices to take it from the launcher (else 1)."),
    ((None, None), torchrun_env(5, 2, 2), "torchrun",
     ("torchrun: started WORLD_SIZE=5 processes on GROUP_WORLD_SIZE=2 nodes with LOCAL_WORLD_SIZE=2 on this node. Lightning needs "
      "the same number of processes on every node: give each node the same --nproc_per_node.")),
])
def test_contradicting_or_invalid_values_are_one_line_errors(args, env, key, message):
    with pytest.raises(ConfigError) as err:
        resolve_devices(*args, env, devices_key="--devices")
    assert err.value.key == key and str(err.value) == message


def test_cli_reports_a_contradiction_in_one_line_with_status_2(tmp_path, monkeypatch, capsys):
    for name, value in torchrun_env(2, 2, 1).items():
        monkeypatch.setenv(name, value)
    assert main(["recipes/dino.py", *TINY, f"trainer.output_dir={tmp_path}", "--strategy", "ddp", "--devices", "3"]) == 2
    assert capsys.readouterr().err == ("error: --devices: is 3 but torchrun started 2 processes per node (LOCAL_WORLD_SIZE=2). "
                                       "Drop --devices or make them agree.\n")
    assert main(["recipes/dino.py", *TINY, f"trainer.output_dir={tmp_path}", "trainer.devices=3"]) == 2
    assert capsys.readouterr().err.startswith("error: trainer.devices: is 3 but torchrun started 2 processes per node")
    assert not any(tmp_path.iterdir())


def test_cli_rejects_zero_devices(tmp_path, capsys):
    assert main(["recipes/dino.py", *TINY, f"trainer.output_dir={tmp_path}", "--devices", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --devices: must be an int >= 1, got 0.")


def test_dry_run_shows_the_resolved_devices_and_nodes(tmp_path, monkeypatch, capsys):
    for name, value in torchrun_env(4, 2, 2).items():
        monkeypatch.setenv(name, value)
    assert main(["recipes/dino.py", *TINY, f"trainer.output_dir={tmp_path}", "--strategy", "ddp", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "trainer.devices=2, trainer.num_nodes=2; launcher: torchrun started 2 processes per node (LOCAL_WORLD_SIZE=2); " \
           "torchrun started 2 nodes (GROUP_WORLD_SIZE=2)" in out


def test_sweeps_relaunch_only_where_no_launcher_started_the_processes(monkeypatch):
    for name in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert detect().kind == "none"
    assert needs_relaunch(2, "ddp") and needs_relaunch(2, "fsdp2")
    assert not needs_relaunch(1, "ddp") and not needs_relaunch(2, "auto")
    monkeypatch.setenv("SLURM_NTASKS", "2")  # srun started the tasks: relaunching would nest torchrun in them
    assert not needs_relaunch(2, "ddp")
    monkeypatch.delenv("SLURM_NTASKS")
    for name, value in torchrun_env(2, 2, 1).items():
        monkeypatch.setenv(name, value)
    assert not needs_relaunch(2, "ddp")


# ---------------------------------------------------------------------------------- real launches
@pytest.mark.timeout(200)
def test_readme_torchrun_command_trains_one_job_on_two_processes(tmp_path):
    """``torchrun --nproc_per_node=2 -m sptrack.run recipes/dino.py --strategy ddp``: no --devices needed."""
    output = run([*TORCHRUN, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "sptrack.run",
                  "recipes/dino.py", "--strategy", "ddp", *TINY, f"trainer.output_dir={tmp_path}"], timeout=180)
    assert output.count("sptrack dino: results") == 1  # rank 0 reports
    runs = sorted((tmp_path / "dino").iterdir())
    assert [p.name for p in runs] == ["version_0"], "both ranks must share one run directory"
    ckpt = torch.load(runs[0] / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2  # 128 samples / (2 ranks x 32); one process would take 4 steps


def _launch_node(node_rank: int, port: int, cwd: Path, args: list[str]) -> subprocess.Popen:
    cmd = [*TORCHRUN, "--nnodes", "2", "--node_rank", str(node_rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "sptrack.run", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.timeout(240)
def test_two_node_launch_trains_one_job_with_equal_weights_on_both_nodes(tmp_path):
    """Two torchrun commands, one per "node", each with its own folder; only the MLflow database is shared."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    port, nodes = free_port(), [tmp_path / "node0", tmp_path / "node1"]
    procs = []
    for rank, node in enumerate(nodes):
        node.mkdir()
        procs.append(_launch_node(rank, port, node, [str(WEIGHTS_RECIPE), "--strategy", "ddp", "--tracker", "mlflow", f"tracker.uri={uri}",
                                                    *TINY, f"trainer.output_dir={node / 'out'}"]))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=200)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("a node timed out:\n" + "\n".join(p.communicate()[0][-6000:] for p in procs))
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-8000:]

    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1 and runs["status"].tolist() == ["FINISHED"]
    assert runs["params.trainer/world_size"].tolist() == ["2"] and runs["params.trainer/num_nodes"].tolist() == ["2"]

    node0, node1 = (torch.load(node / "out" / f"weights-rank{rank}.pt", weights_only=False) for rank, node in enumerate(nodes))
    for record in (node0, node1):
        assert (record["world_size"], record["num_nodes"], record["global_step"]) == (2, 2, 2)
    # Every parameter (student, EMA teacher, probe) and buffer is the same on both nodes, except the
    # BatchNorm running statistics: DDP broadcasts rank 0's buffers at each forward, then each rank
    # updates them on its own batch (no SyncBatchNorm), so those end per-rank by construction.
    compared = [k for k in node0["state_dict"] if not k.endswith((".running_mean", ".running_var"))]
    assert len(compared) > 50 and any(k.startswith("teacher.module.") for k in compared)
    assert [k for k in compared if not torch.equal(node0["state_dict"][k], node1["state_dict"][k])] == []
    # Rank 0's node holds the job's one run directory and checkpoint; node 1 wrote nothing else.
    ckpt_path = nodes[0] / "out" / "dino_weights" / "version_0" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert ckpt["global_step"] == 2 and all(torch.equal(ckpt["state_dict"][k], node0["state_dict"][k]) for k in compared)
    assert sorted(p.name for p in (nodes[1] / "out").iterdir()) == ["weights-rank1.pt"]


@pytest.mark.timeout(200)
def test_sweep_under_torchrun_needs_no_devices_flag(tmp_path):
    import optuna
    from optuna.trial import TrialState

    storage, record = f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "record"
    run([*TORCHRUN, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "sptrack.run",
         str(TINY_SWEEP_RECIPE), f"trainer.output_dir={tmp_path}", f"record_dir={record}", "--sweep", "--trials", "1",
         "--strategy", "ddp", "--storage", storage, "--study", "t", "--prune-every", "2"], timeout=180)
    (trial,) = optuna.load_study(study_name="t", storage=storage).trials
    assert trial.state == TrialState.COMPLETE
    ranks = [json.loads((record / f"trial-0-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and {r["strategy"] for r in ranks} == {"DDPStrategy"}
    assert ranks[0]["pid"] != ranks[1]["pid"]
    for r in ranks:  # each rank's torch optimizers hold the values rank 0 sampled
        assert r["lr"] == {name: pytest.approx(trial.params[f"optim.{name}.lr"]) for name in ("backbone", "head")}
        assert r["frequency"] == {name: trial.params[f"optim.{name}.frequency"] for name in ("backbone", "head")}


@pytest.mark.timeout(200)
def test_training_through_the_cli_destroys_its_process_group_on_every_rank(tmp_path):
    """The group Lightning creates for DDP is gone when ``main`` returns (left to exit, a rank aborted now and then)."""
    from dist.launch import torchrun

    records = tmp_path / "records"
    torchrun(ROOT / "tests" / "dist" / "train_group_worker.py", str(records), "recipes/dino.py", *TINY, f"trainer.output_dir={tmp_path}",
             "--strategy", "ddp", timeout=180)
    got = [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert got == [{"rank": r, "code": 0, "initialized_after_train": True, "world_size_in_train": 2, "initialized_after_main": False}
                   for r in (0, 1)]
