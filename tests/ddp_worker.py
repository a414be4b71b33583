"""Run under torchrun by tests/test_trainer.py: train with the given argv, then each rank writes its
generator weights (and rank 0 the weights it started from) to the folder ``argv[1]``."""
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
    code = t.run()
    torch.save(t.model.netG.state_dict(), os.path.join(out, f"G{rank}.pth"))
    torch.distributed.destroy_process_group()
    sys.exit(code)
