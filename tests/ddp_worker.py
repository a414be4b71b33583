"""Run under torchrun by tests/test_trainer.py: train with the given argv, then each rank writes its
generator weights (and rank 0 the weights it started from) and its own losses of every step
(``losses<rank>.json``: one {name: value} per step) to the folder ``argv[1]``."""
import json
import os
import sys

import torch

from qsattn_fast.train import options, trainer

if __name__ == "__main__":
    out, argv = sys.argv[1], sys.argv[2:]
    t = trainer.Trainer(options.parse(argv))
    rank = t.rank
    if rank == 0:
        torch.save(t.model.netG.state_dict(), os.path.join(out, "G_start0.pth"))
    own_losses, optimize = [], t.model.optimize

    def recording_optimize(batch):
        losses = optimize(batch)
        own_losses.append({k: float(v) for k, v in losses.items()})
        return losses

    t.model.optimize = recording_optimize
    code = t.run()
    torch.save(t.model.netG.state_dict(), os.path.join(out, f"G{rank}.pth"))
    with open(os.path.join(out, f"losses{rank}.json"), "w") as f:
        json.dump(own_losses, f)
    torch.distributed.destroy_process_group()
    sys.exit(code)
