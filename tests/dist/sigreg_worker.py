"""SIGReg / LeJEPA loss, KoLeo, I-JEPA's PositionCenter and DINO's centre on this rank's share of a fixed global batch; writes values and gradients.

Run under torchrun (gloo) or alone (the whole batch). Rank r of W takes rows [r*N/W, (r+1)*N/W) of
every view. Also records this process's thread count before the group and after destroying it: a
group something still holds keeps gloo's threads alive into interpreter exit, where they can abort
the rank.
"""

import os
import sys

import torch
import torch.distributed as dist

from sptrack.methods import DINOLoss, KoLeo, LeJEPALoss, SIGReg
from sptrack.methods.ijepa import PositionCenter
from sptrack.parallel.process_group import close_default_group

torch.set_num_threads(1)
out = sys.argv[1]
world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
threads_before = len(os.listdir("/proc/self/task"))
if world > 1:
    dist.init_process_group("gloo")
threads_in_group = len(os.listdir("/proc/self/task"))

g = torch.Generator().manual_seed(0)
z_all = torch.randn(4, 64, 16, generator=g, dtype=torch.float64) * 1.3 + 0.2  # (views, N, dim)
rows = slice(rank * 64 // world, (rank + 1) * 64 // world)
z = z_all[:, rows].clone().requires_grad_(True)
sig = SIGReg(num_slices=128, seed=5).double()(z, step=7)
sig.backward()
z2 = z_all[:, rows].clone().requires_grad_(True)
lejepa = LeJEPALoss(lamb=0.3, num_slices=128, seed=5).double()(z2, n_global=2, step=7)
lejepa.loss.backward()
z3 = z_all[:2, rows].clone().requires_grad_(True)  # two views: the neighbours are searched in the global batch
koleo = KoLeo()(z3)
koleo.backward()
tokens = torch.randn(2, 64, 5, 3, generator=g, dtype=torch.float64)  # two batches of (N=64, positions 5, width 3)
center = PositionCenter(5, 3, momentum=0.75).double()
centered = center(tokens[0, rows])  # the first batch sets the centre to its global mean
center.update(tokens[0, rows])
center.update(tokens[1, rows])
teacher_out = torch.randn(2, 2, 64, 6, generator=g)  # two steps of two global views, N=64, 6 prototypes
dino = DINOLoss(out_dim=6, center_momentum=0.8)
for step in teacher_out:
    dino.update_center([view[rows] for view in step])
results = {"center": center.center, "centered": centered, "sigreg": sig.detach(), "grad": z.grad,
           "lejepa": lejepa.loss.detach(), "invariance": lejepa.invariance.detach(), "lejepa_grad": z2.grad,
           "koleo": koleo.detach(), "koleo_grad": z3.grad, "dino_center": dino.center, "world": world}
close_default_group()  # after a barrier: every rank's collectives done before the group goes
results["threads"] = (threads_before, threads_in_group, len(os.listdir("/proc/self/task")))
torch.save(results, f"{out}/rank{rank}.pt")
