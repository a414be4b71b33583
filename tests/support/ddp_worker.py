"""Run under torchrun by tests/train/test_trainer.py: train with the given argv, then each rank writes its
generator weights (the model's TRANSLATOR: G, or CycleGAN's G_A; rank 0 also the weights it started
from) and those of its EMA (``G_ema<rank>.pth``), its own losses of every step (``losses<rank>.json``:
one {name: value} per step) and how it ended (``end<rank>.json``: exit code and step) to the folder
``argv[1]``, where ``pid<rank>`` holds its process id from the start."""
import json
import os
import sys

import torch

from qsattn_fast.train import options, trainer

if __name__ == "__main__":
    out, argv = sys.argv[1], sys.argv[2:]
    t = trainer.Trainer(options.parse(argv))
    rank, net_g = t.rank, t.model.nets[t.model.TRANSLATOR]
    with open(os.path.join(out, f"pid{rank}"), "w") as f:
        f.write(str(os.getpid()))
    if rank == 0:
        torch.save(net_g.state_dict(), os.path.join(out, "G_start0.pth"))
    own_losses, optimize = [], t.model.optimize

    def recording_optimize(batch):
        losses = optimize(batch)
        own_losses.append({k: float(v) for k, v in losses.items()})
        return losses

    t.model.optimize = recording_optimize
    code = t.run()
    torch.save(net_g.state_dict(), os.path.join(out, f"G{rank}.pth"))
    torch.save(t.model.ema.state_dict(), os.path.join(out, f"G_ema{rank}.pth"))
    with open(os.path.join(out, f"losses{rank}.json"), "w") as f:
        json.dump(own_losses, f)
    with open(os.path.join(out, f"end{rank}.json"), "w") as f:
        json.dump({"code": code, "step": t.step}, f)
    torch.distributed.destroy_process_group()
    sys.exit(code)
