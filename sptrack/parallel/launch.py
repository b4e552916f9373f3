"""What the launcher says: how many processes per node and how many nodes torchrun or SLURM started.

Lightning checks ``devices`` and ``num_nodes`` against the launcher (``devices * num_nodes`` must be
torchrun's ``WORLD_SIZE``; under SLURM they must match ``--ntasks-per-node`` and ``--nodes``) but
never takes them from it, so a fixed default of 1 fails on every rank of
``torchrun --nproc_per_node=2``. A config therefore leaves them ``None`` ("from the launcher, else
1") and :func:`resolve_devices` fills them in; a value the user gave that contradicts the launcher is
a :class:`~sptrack.errors.ConfigError`, raised before anything is built.

Detection follows Lightning's own choice of cluster environment, in its order: torchrun (torchelastic)
when ``TORCHELASTIC_RUN_ID`` is set, then SLURM when ``SLURM_NTASKS`` is set and the job is not named
``bash`` or ``interactive`` (there Lightning ignores SLURM, and so does this module). Everything here
reads only an environment mapping, so it is tested with plain dicts and imports nothing heavy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from sptrack.errors import ConfigError


@dataclass(frozen=True)
class Launch:
    """What started this process.

    ``kind`` is ``"torchrun"``, ``"slurm"`` or ``"none"``; ``devices`` (processes per node) and
    ``num_nodes`` are what that launcher says, None where it says nothing; ``devices_said`` and
    ``nodes_said`` state them with the variables they come from, for messages.
    """

    kind: str = "none"
    devices: int | None = None
    num_nodes: int | None = None
    devices_said: str = ""
    nodes_said: str = ""

    def describe(self) -> str:
        """One line: the launcher and what it says."""
        said = [s for s in (self.devices_said, self.nodes_said) if s]
        if self.kind == "none":
            return "launcher: none (no torchrun or SLURM variables)"
        if not said:
            return f"launcher: {self.kind} (it says neither processes per node nor nodes)"
        return "launcher: " + "; ".join(said)


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _int(env: Mapping[str, str], name: str) -> int | None:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        return None


def _torchrun(env: Mapping[str, str]) -> Launch:
    world, local, groups = _int(env, "WORLD_SIZE"), _int(env, "LOCAL_WORLD_SIZE"), _int(env, "GROUP_WORLD_SIZE")
    if world is None or local is None:
        return Launch("torchrun")
    if world % local or (groups is not None and groups * local != world):
        nodes = f" on GROUP_WORLD_SIZE={groups} nodes" if groups is not None else ""
        raise ConfigError("torchrun", f"started WORLD_SIZE={world} processes{nodes} with LOCAL_WORLD_SIZE={local} on this node.",
                          "Lightning needs the same number of processes on every node: give each node the same --nproc_per_node.")
    nodes = world // local
    source = f"GROUP_WORLD_SIZE={groups}" if groups is not None else f"WORLD_SIZE={world} / LOCAL_WORLD_SIZE={local}"
    return Launch("torchrun", local, nodes,
                  f"torchrun started {_plural(local, 'process', 'processes')} per node (LOCAL_WORLD_SIZE={local})",
                  f"torchrun started {_plural(nodes, 'node', 'nodes')} ({source})")


def _slurm(env: Mapping[str, str]) -> Launch:
    per_node, nodes, tasks = _int(env, "SLURM_NTASKS_PER_NODE"), _int(env, "SLURM_NNODES"), _int(env, "SLURM_NTASKS")
    devices_said = nodes_said = ""
    if per_node is None and tasks == 1:
        per_node, devices_said = 1, "SLURM started 1 task per node (SLURM_NTASKS=1)"
    elif per_node is not None:
        devices_said = f"SLURM started {_plural(per_node, 'task', 'tasks')} per node (SLURM_NTASKS_PER_NODE={per_node})"
    if nodes is not None:
        nodes_said = f"SLURM started {_plural(nodes, 'node', 'nodes')} (SLURM_NNODES={nodes})"
    return Launch("slurm", per_node, nodes, devices_said, nodes_said)


def detect(env: Mapping[str, str] | None = None) -> Launch:
    """The launcher of this process (``os.environ`` unless ``env`` is given) and what it says."""
    env = os.environ if env is None else env
    if env.get("TORCHELASTIC_RUN_ID") is not None:
        return _torchrun(env)
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return _slurm(env)
    return Launch()


def _check_positive(key: str, value: object) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ConfigError(key, f"must be an int >= 1, got {value!r}.", f"Drop {key} to take it from the launcher (else 1).")


def _agree(key: str, given: int | None, said: int | None, saying: str) -> int:
    if given is None:
        return 1 if said is None else said
    if said is not None and given != said:
        raise ConfigError(key, f"is {given} but {saying}.", f"Drop {key} or make them agree.")
    return given


def resolve_devices(devices: int | None, num_nodes: int | None, env: Mapping[str, str] | None = None,
                    devices_key: str = "trainer.devices", nodes_key: str = "trainer.num_nodes") -> tuple[int, int]:
    """``(devices, num_nodes)`` for the Trainer: the given values, else the launcher's, else 1.

    ``devices_key`` / ``nodes_key`` name the option the user set (e.g. ``--devices``) in the errors:
    a value below 1, or one that contradicts the launcher. Resolving resolved values again returns
    them unchanged.
    """
    _check_positive(devices_key, devices)
    _check_positive(nodes_key, num_nodes)
    launch = detect(env)
    return (_agree(devices_key, devices, launch.devices, launch.devices_said),
            _agree(nodes_key, num_nodes, launch.num_nodes, launch.nodes_said))
