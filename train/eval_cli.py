"""``qsattn-eval`` (also ``python -m qsattn_fast.train.eval_cli``): the command line of the evaluation library
:mod:`.evaluation` (the protocol is there and in docs/evaluation.md)."""
from __future__ import annotations

import json
import sys

from .cli import Parser, add_debug_flag, one_line_errors
from .data import DATASET_MODES, SYNTHETIC_TASKS
from .evaluation import evaluate, jsonable, write_synthetic


def format_table(numbers: dict) -> str:
    """The results as a two-column text table."""
    rows = []
    for k, v in numbers.items():
        if isinstance(v, dict):
            rows += [(f"{k} @{r}", f"{x:.4f}") for r, x in v.items()]
        else:
            rows.append((k, f"{v:.6g}" if isinstance(v, float) else str(v)))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def build_parser() -> Parser:
    p = Parser(prog="qsattn-eval",
               description="FID, KID and SWD between real and translated images "
                           "(and the synthetic tasks' own measures against their paired ground truth).")
    p.add_argument("--real", help="folder of real target-domain images (e.g. testB)")
    p.add_argument("--fake", help="folder of translated images")
    p.add_argument("--metrics", default=None,
                   help="comma list of fid, kid, swd, synthetic (default fid,kid,swd; synthetic,swd "
                        "with --dataset_mode synthetic)")
    p.add_argument("--json", default=None, help="also write the numbers and settings to this JSON file")
    p.add_argument("--inception-weights", "--inception_weights", dest="inception_weights", default=None,
                   help="FID Inception weights file (else $QSATTN_INCEPTION_WEIGHTS, then torch hub's cache)")
    p.add_argument("--dataset_mode", default="unaligned", choices=DATASET_MODES,
                   help="synthetic: --fake holds translations of the synthetic test split")
    p.add_argument("--synthetic_seed", type=int, default=0, help="--seed of the synthetic run")
    p.add_argument("--synthetic_task", default="recolour", choices=sorted(SYNTHETIC_TASKS),
                   help="--synthetic_task of the synthetic run")
    p.add_argument("--synthetic_period_scale", type=float, default=1.0,
                   help="--synthetic_period_scale of the synthetic run")
    p.add_argument("--write_synthetic", default=None, metavar="DIR",
                   help="write the synthetic test split (DIR/testA, DIR/testB) and exit")
    p.add_argument("--num_test", type=int, default=100, help="items written by --write_synthetic")
    p.add_argument("--size", type=int, default=64, help="image size written by --write_synthetic")
    p.add_argument("--max_images", type=int, default=None, help="use at most this many images per folder")
    p.add_argument("--batch_size", type=int, default=50, help="images per forward pass / pyramid batch")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (for the Inception network)")
    p.add_argument("--seed", type=int, default=0, help="seed of KID's subsets and SWD's patches and directions")
    p.add_argument("--swd_size", type=int, default=None,
                   help="SWD resizes images to this square size (default: the first fake image's side if "
                        "it is square, else 256)")
    p.add_argument("--kid_subsets", type=int, default=100, help="KID: number of random subsets")
    p.add_argument("--kid_subset_size", type=int, default=1000, help="KID: images per subset (at most n)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars (there are none when stderr is not a terminal)")
    add_debug_flag(p)
    return p


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if not a.synthetic_period_scale > 0:
        p.error(f"--synthetic_period_scale must be > 0, got {a.synthetic_period_scale}")

    def work():
        if a.write_synthetic:
            n = write_synthetic(a.write_synthetic, a.synthetic_seed, a.num_test, a.size, a.synthetic_task,
                                a.synthetic_period_scale)
            print(f"qsattn-eval: wrote {n} synthetic test pairs to {a.write_synthetic}/testA and testB")
            return 0
        metrics = [m.strip() for m in a.metrics.split(",") if m.strip()] if a.metrics else None
        res = evaluate(a.real, a.fake, metrics, dataset_mode=a.dataset_mode, synthetic_seed=a.synthetic_seed,
                       synthetic_task=a.synthetic_task, synthetic_period_scale=a.synthetic_period_scale,
                       inception_weights=a.inception_weights, max_images=a.max_images, batch_size=a.batch_size,
                       device=a.device, seed=a.seed, swd_size=a.swd_size, kid_subsets=a.kid_subsets,
                       kid_subset_size=a.kid_subset_size, progress=not a.quiet and sys.stderr.isatty())
        print(format_table(res["metrics"]))
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"metrics": jsonable(res["metrics"]), "settings": res["settings"]}, f, indent=1)
        return 0

    return one_line_errors("qsattn-eval", work, a.debug)


if __name__ == "__main__":
    sys.exit(main())
