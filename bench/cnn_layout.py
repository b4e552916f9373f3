"""SmallCNN's memory layout: channels-last against contiguous convolutions, side by side.

    python bench/cnn_layout.py --out DIR [--rounds 7] [--quick]

Times what one DINO step asks of the backbone (forward and backward of the student on the global views,
then a no-grad forward of the teacher) for ``SmallCNN(widths=(16, 32, 64))`` on 28x28 images, batch 128
(2 views x 64), with 1 and 2 torch threads, in both layouts with the same weights. Rounds alternate the
two; medians of per-round times and of per-round ratios are reported, and the largest difference of
the embeddings is recorded. Writes ``DIR/cnn_layout.json`` with a ``"markdown"`` section for RESULTS.md.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.add_repo_to_path()

WIDTHS, BATCH, SIDE = (16, 32, 64), 128, 28


def _step(net, x) -> float:
    import torch

    started = time.perf_counter()
    net(x).square().mean().backward()
    with torch.no_grad():
        net(x)
    seconds = time.perf_counter() - started
    net.zero_grad(set_to_none=True)
    return seconds


def measure(threads: int, rounds: int) -> dict:
    """Interleaved rounds of both layouts at ``threads``; medians and the embeddings' largest difference."""
    import torch

    from sptrack.nn import SmallCNN

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    nets = {"channels_last": SmallCNN(widths=WIDTHS), "contiguous": SmallCNN(widths=WIDTHS, channels_last=False)}
    nets["contiguous"].load_state_dict(nets["channels_last"].state_dict())
    x = torch.randn(BATCH, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    for net in nets.values():  # warm-up: allocator, thread pool, kernel choice
        _step(net, x)
        _step(net, x)
    times = {name: [] for name in nets}
    for _ in range(rounds):
        for name, net in nets.items():
            times[name].append(_step(net, x))
    with torch.no_grad():
        diff = (nets["channels_last"](x) - nets["contiguous"](x)).abs().max().item()
    ratios = [c / f for c, f in zip(times["contiguous"], times["channels_last"])]
    return {"ms": {name: round(1000 * statistics.median(t), 2) for name, t in times.items()},
            "speedup_median": round(statistics.median(ratios), 2), "speedup_min": round(min(ratios), 2),
            "max_abs_diff": diff}


def markdown(results: dict, rounds: int) -> str:
    lines = ["## SmallCNN layout (student forward + backward, teacher forward)", "",
             f"widths {WIDTHS}, batch {BATCH} of {SIDE}x{SIDE}; median of {rounds} interleaved rounds; the speed-up is "
             "the median of per-round ratios (min in brackets).", "",
             "| threads | contiguous ms | channels-last ms | speed-up | max \\|diff\\| of the embeddings |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for threads, r in results.items():
        lines.append(f"| {threads} | {r['ms']['contiguous']:.1f} | {r['ms']['channels_last']:.1f} | "
                     f"{r['speedup_median']:.2f}× ({r['speedup_min']:.2f}×) | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def measure_all(rounds: int) -> dict:
    """Both thread counts, printed as they are measured."""
    results = {}
    for threads in (1, 2):
        results[str(threads)] = r = measure(threads, rounds)
        print(f"{threads} thread(s): contiguous {r['ms']['contiguous']} ms, channels-last {r['ms']['channels_last']} ms, "
              f"speed-up {r['speedup_median']}x", flush=True)
    return results


def main(argv=None) -> int:
    return common.two_form_main(argv, __doc__, "cnn_layout", measure_all, markdown, widths=WIDTHS, batch=BATCH)


if __name__ == "__main__":
    raise SystemExit(main())
