"""What ran: Python, platform, installed package versions, devices and git commit (no environment variables)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any, Optional

from sptrack.track.redact import redact_argv, redact_value

KEY_PACKAGES = ("sptrack", "torch", "lightning", "mlflow", "wandb", "numpy", "optuna", "kornia", "torchvision")


def _git(args: list[str], cwd: str) -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info(path: Optional[str] = None) -> Optional[dict[str, Any]]:
    """Commit, branch, dirty flag and redacted remote of the repository containing ``path`` (None outside git)."""
    cwd = os.path.abspath(path or os.getcwd())
    if not os.path.isdir(cwd):
        cwd = os.path.dirname(cwd)
    commit = _git(["rev-parse", "HEAD"], cwd)
    if not commit:
        return None
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return {
        "commit": commit,
        "branch": _git(["rev-parse", "--abbrev-ref", "HEAD"], cwd),
        "dirty": bool(status),
        "root": _git(["rev-parse", "--show-toplevel"], cwd),
        "remote": redact_value(_git(["config", "--get", "remote.origin.url"], cwd)),
    }


def package_versions() -> dict[str, str]:
    """``{distribution name: version}`` of every installed distribution, sorted by name."""
    versions = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            versions.setdefault(name, dist.version)
    return dict(sorted(versions.items(), key=lambda kv: kv[0].lower()))


def _devices() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu_count": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_cuda"] = getattr(torch.version, "cuda", None)
        try:
            if torch.cuda.is_available():
                info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:  # noqa: BLE001 - diagnostics only
            pass
    return info


def collect_environment(code_path: Optional[str] = None) -> dict[str, Any]:
    """The environment record logged as ``environment.json`` with every run.

    ``git`` describes the working directory's repository, ``sptrack_git`` the one sptrack is
    imported from when it differs (an editable install). Environment variables are not recorded.
    """
    packages = package_versions()
    lower = {k.lower(): v for k, v in packages.items()}
    work = git_info(code_path)
    sptrack_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    own = git_info(sptrack_dir)
    return {
        "python": sys.version,
        "executable": sys.executable,
        "platform": platform.platform(),
        "hostname": platform.node(),
        "argv": redact_argv(sys.argv),
        "cwd": os.getcwd(),
        "git": work,
        "sptrack_git": own if own and (not work or own["root"] != work["root"]) else None,
        "key_packages": {name: lower.get(name) for name in KEY_PACKAGES if name in lower},
        "devices": _devices(),
        "packages": packages,
    }
