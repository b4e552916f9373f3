"""SIGReg's characteristic-function sums: the knot recurrence against cos/sin written out, side by side.

    python bench/sigreg.py --out DIR [--rounds 7] [--quick]

Times one forward and backward pass of the sums ``sum_n cos(t_k x)``, ``sum_n sin(t_k x)`` (17 knots on
[0, 3], the paper's grid) on LeJEPA's default shapes (8 views x 128 images x 1024 slices) and I-JEPA's
(1 x 128 x 256), with 1 and 2 torch threads: ``direct`` is the formulation SIGReg used before (one
``(views, N, slices, knots)`` tensor of angles, its cos and sin, autograd's backward), ``recurrence`` is
``sptrack.methods.characteristic.uniform_grid_sums``. Rounds alternate the two; medians of per-round
times and of per-round ratios are reported, and the largest difference of the values (float32 against
float32) is recorded. Writes ``DIR/sigreg.json`` with a ``"markdown"`` section for RESULTS.md.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.add_repo_to_path()

SHAPES = {"lejepa (8 x 128 x 1024)": (8, 128, 1024), "ijepa (1 x 128 x 256)": (1, 128, 256)}
KNOTS, DT = 17, 3.0 / 16


def direct(x, dt: float, knots: int):
    """The sums as SIGReg computed them before: every angle, its cosine and sine materialised."""
    import torch

    xt = x.unsqueeze(-1) * (torch.arange(knots, dtype=x.dtype) * dt)
    return xt.cos().sum(-3), xt.sin().sum(-3)


def _step(fn, x) -> float:
    started = time.perf_counter()
    cos_sum, sin_sum = fn(x, DT, KNOTS)
    ((cos_sum - 1).square().sum() + sin_sum.square().sum()).backward()
    seconds = time.perf_counter() - started
    x.grad = None
    return seconds


def measure(shape: tuple, threads: int, rounds: int) -> dict:
    """Interleaved rounds of both forms at ``threads``; medians and the values' largest difference."""
    import torch

    from sptrack.methods.characteristic import uniform_grid_sums

    torch.set_num_threads(threads)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).mul_(1.5).requires_grad_(True)
    forms = {"direct": direct, "recurrence": uniform_grid_sums}
    for fn in forms.values():  # warm-up: allocator, thread pool
        _step(fn, x)
    times = {name: [] for name in forms}
    for _ in range(rounds):
        for name, fn in forms.items():
            times[name].append(_step(fn, x))
    with torch.no_grad():
        diff = max((a - b).abs().max().item() for a, b in zip(direct(x, DT, KNOTS), uniform_grid_sums(x, DT, KNOTS)))
    ratios = [d / r for d, r in zip(times["direct"], times["recurrence"])]
    return {"ms": {name: round(1000 * statistics.median(t), 2) for name, t in times.items()},
            "speedup_median": round(statistics.median(ratios), 2), "speedup_min": round(min(ratios), 2),
            "max_abs_diff": diff}


def markdown(results: dict, rounds: int) -> str:
    lines = ["## SIGReg's characteristic-function sums (forward + backward)", "",
             f"17 knots; median of {rounds} interleaved rounds; the speed-up is the median of per-round ratios (min in "
             "brackets); `direct` materialises every (sample, slice, knot) angle, `recurrence` is "
             "`sptrack.methods.characteristic`.", "",
             "| shape | threads | direct ms | recurrence ms | speed-up | max \\|diff\\| of the sums |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for key, r in results.items():
        shape, threads = key.rsplit(" @ ", 1)
        lines.append(f"| {shape} | {threads} | {r['ms']['direct']:.1f} | {r['ms']['recurrence']:.1f} | "
                     f"{r['speedup_median']:.1f}× ({r['speedup_min']:.1f}×) | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def measure_all(rounds: int) -> dict:
    """Every shape at 1 and 2 threads, printed as it is measured."""
    results = {}
    for name, shape in SHAPES.items():
        for threads in (1, 2):
            results[f"{name} @ {threads}"] = r = measure(shape, threads, rounds)
            print(f"{name}, {threads} thread(s): direct {r['ms']['direct']} ms, recurrence {r['ms']['recurrence']} ms, "
                  f"speed-up {r['speedup_median']}x", flush=True)
    return results


def main(argv=None) -> int:
    return common.two_form_main(argv, __doc__, "sigreg", measure_all, markdown, knots=KNOTS)


if __name__ == "__main__":
    raise SystemExit(main())
