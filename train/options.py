"""Command-line options of ``qsattn-train``: CUT's flag names and defaults, plus the QS-Attn flags.

Model-dependent defaults (each model's ``DEFAULTS``, :mod:`.models`) follow CUT (``--model cut``:
nce_idt on, lambda_NCE 1; ``fastcut``: nce_idt off, lambda_NCE 10, flip equivariance, 150 + 50 epochs;
``cycle_gan``: CUT's cycle_gan_model, whose
flags lambda_A 10, lambda_B 10, lambda_identity 0.5 and pool_size 50 only it reads, and which leaves
the base defaults as they are: no_dropout on, lsgan, 200 + 200 epochs) and QS-Attn (``--model qs``: as
CUT, with QS-Attn on ``--qs_layers``). ``--CUT_mode FastCUT`` and ``--QS_mode`` are accepted as in those repos.
``--demo`` switches to the training demo's settings (:data:`.demo.SETTINGS`); explicit flags still win.
"""
from __future__ import annotations

import argparse
import math

from qsattn_fast import BACKENDS, OP_MODES, PRECISIONS, VARIANTS
from qsattn_fast.sampler import INIT_TYPES

from . import demo
from .cli import Parser, add_debug_flag
from .data import DATASET_MODES, PREPROCESS, SYNTHETIC_TASKS
from .model import LR_POLICIES, NONFINITE_POLICIES
from .models import MODELS
from .networks import DISCRIMINATORS, GENERATOR_BLOCKS, NORMS, GANLoss


def str2bool(v) -> bool:
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def _layer_list(parser, flag, text) -> list[int]:
    """A comma list of layer indices (a usage error otherwise)."""
    try:
        return [int(i) for i in str(text).split(",") if i.strip()]
    except ValueError:
        parser.error(f"{flag}: expected comma-separated layer indices{' or all' if flag == '--qs_layers' else ''}, "
                     f"got {text!r}")


def _bool(parser, name, help, default=None):
    """``--name`` alone means true; ``--name false`` (yes/no, 1/0, ...) is accepted too."""
    parser.add_argument(name, type=str2bool, nargs="?", const=True, default=default, help=help)


def build_parser() -> Parser:
    p = Parser(
        prog="qsattn-train",
        description="Train CUT, FastCUT, CUT with QS-Attn (query-selected attention) or CycleGAN for unpaired "
                    "image-to-image translation. Flags and defaults are those of CUT's train.py.")
    g = p.add_argument_group("run")
    g.add_argument("--demo", action="store_true", help=demo.HELP)
    g.add_argument("--dataroot", default=None, help="folder with trainA/ and trainB/ (CUT's layout)")
    g.add_argument("--name", default="experiment_name", help="experiment name: checkpoints go to checkpoints_dir/name")
    g.add_argument("--checkpoints_dir", default="./checkpoints", help="where experiments are stored")
    g.add_argument("--gpu_ids", default="auto",
                   help="GPU ids, e.g. 0 or 0,1 (one per torchrun process); -1 for CPU; auto: GPU 0 where CUDA is "
                        "present, else the CPU")
    g.add_argument("--seed", type=int, default=0, help="random seed (initialisation, data order, patches)")
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the networks (GPU only)")
    add_debug_flag(g)
    g.add_argument("--skip_bad_images", action="store_true",
                   help="skip training images that cannot be decoded (with a warning) instead of refusing to start")
    g.add_argument("--torch_threads", "--cpu_threads", dest="torch_threads", type=int, default=0,
                   help="torch's intra-op threads, torch.set_num_threads (0: torch's default); 1 is fastest for small "
                        "runs on a busy machine. --cpu_threads is its old name, accepted until 0.2")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, choices=sorted(MODELS),
                   help="cut: CUT (the default); fastcut: FastCUT; qs: CUT with QS-Attn on --qs_layers; "
                        "cycle_gan: CycleGAN (CUT's cycle_gan_model)")
    g.add_argument("--CUT_mode", default=None, choices=["CUT", "cut", "FastCUT", "fastcut"],
                   help="CUT's spelling of --model cut / fastcut")
    g.add_argument("--input_nc", type=int, default=3, help="channels of input images")
    g.add_argument("--output_nc", type=int, default=3, help="channels of output images")
    g.add_argument("--ngf", type=int, default=64, help="generator filters in the last conv layer")
    g.add_argument("--ndf", type=int, default=64, help="discriminator filters in the first conv layer")
    g.add_argument("--netD", default="basic", choices=DISCRIMINATORS, help="PatchGAN discriminator")
    g.add_argument("--netG", default="resnet_9blocks", choices=list(GENERATOR_BLOCKS),
                   help="ResNet generator")
    g.add_argument("--n_layers_D", type=int, default=3, help="discriminator layers when netD is n_layers")
    g.add_argument("--normG", default="instance", choices=NORMS, help="generator norm")
    g.add_argument("--normD", default="instance", choices=NORMS, help="discriminator norm")
    g.add_argument("--init_type", default="xavier", choices=INIT_TYPES,
                   help="weight initialisation")
    g.add_argument("--init_gain", type=float, default=0.02, help="scale of normal, xavier and orthogonal init")
    g.add_argument("--no_dropout", type=str2bool, nargs="?", const=True, default=True, help="no dropout in G")
    g.add_argument("--no_antialias", action="store_true", help="strided convs instead of anti-aliased downsampling")
    g.add_argument("--no_antialias_up", action="store_true", help="transposed convs instead of anti-aliased upsampling")
    g = p.add_argument_group("losses")
    g.add_argument("--gan_mode", default="lsgan", choices=GANLoss.MODES, help="GAN objective")
    g.add_argument("--lambda_GAN", type=float, default=1.0, help="weight of the GAN loss GAN(G(X))")
    g.add_argument("--lambda_NCE", type=float, default=None, help="weight of the NCE loss (cut/qs 1, fastcut 10)")
    _bool(g, "--nce_idt", "also the identity NCE loss NCE(G(Y), Y) (cut/qs on, fastcut off)")
    g.add_argument("--nce_layers", default="0,4,8,12,16", help="generator layers for the NCE loss")
    g.add_argument("--nce_includes_all_negatives_from_minibatch", type=str2bool, nargs="?", const=True, default=False,
                   help="negatives from every image of the minibatch, not only the same image")
    g.add_argument("--netF", default="mlp_sample", choices=["sample", "mlp_sample"],
                   help="patch sampler: with (mlp_sample) or without a 2-layer MLP head")
    g.add_argument("--netF_nc", type=int, default=256, help="width of the MLP head")
    g.add_argument("--nce_T", type=float, default=0.07, help="temperature of the NCE loss")
    g.add_argument("--num_patches", type=int, default=256, help="patches per layer (and per image on QS layers)")
    _bool(g, "--flip_equivariance", "flip-equivariance regularisation (fastcut on)")
    g = p.add_argument_group("QS-Attn (--model qs)")
    g.add_argument("--qs_mode", "--QS_mode", default="global", choices=OP_MODES["qsattn"],
                   help="attention for query selection and routing")
    g.add_argument("--qs_layers", default="",
                   help="NCE layers with QS-Attn, e.g. 12,16, or all (default: the last two)")
    g.add_argument("--qs_backend", default="auto", choices=["auto", *BACKENDS],
                   help="QS-Attn backend (auto: the fastest available, never reference)")
    g.add_argument("--qs_precision", default=None, choices=list(PRECISIONS),
                   help="matrix precision for fp32 features (default: the backend's fp32-faithful one)")
    g.add_argument("--qs_variant", default="paper", choices=VARIANTS,
                   help="official: the released code's local layout (reference backend only)")
    g.add_argument("--qs_window", type=int, default=7, help="local attention window")
    _bool(g, "--qs_detach_attention", "build the attention from detached source features: the source encoder "
          "gets no gradient through the attention rows (off: the paper's and the released code's semantics; "
          "on: a cheaper step, see docs/performance.md)", default=False)
    g = p.add_argument_group("CycleGAN (--model cycle_gan)")
    g.add_argument("--lambda_A", type=float, default=10.0, help="weight of the cycle loss |G_B(G_A(A)) - A|")
    g.add_argument("--lambda_B", type=float, default=10.0, help="weight of the cycle loss |G_A(G_B(B)) - B|")
    g.add_argument("--lambda_identity", type=float, default=0.5,
                   help="identity loss lambda_identity * (lambda_B |G_A(B) - B| + lambda_A |G_B(A) - A|); 0: none")
    g.add_argument("--pool_size", type=int, default=50,
                   help="past generated images each discriminator is shown from (0: only the current ones)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset_mode", default="unaligned", choices=DATASET_MODES,
                   help="unaligned: trainA/trainB folders; synthetic: a built-in task (--synthetic_task)")
    g.add_argument("--synthetic_task", default="recolour", choices=sorted(SYNTHETIC_TASKS),
                   help="recolour: warm shapes with a grey mark -> the same shapes in cool colours; "
                        "stripes: plain shapes -> striped shapes (harder)")
    g.add_argument("--synthetic_period_scale", type=float, default=1.0,
                   help="synthetic stripes' period x this (1: 7.5-15%% of the image width)")
    g.add_argument("--synthetic_size", type=int, default=200, help="items of the synthetic dataset")
    g.add_argument("--phase", default="train", help="folder prefix: <phase>A, <phase>B")
    g.add_argument("--direction", default="AtoB", choices=["AtoB", "BtoA"], help="translation direction")
    g.add_argument("--serial_batches", action="store_true", help="take images in order (and A, B in pairs)")
    g.add_argument("--num_threads", type=int, default=4,
                   help="data-loading worker processes (CUT's flag: the DataLoader's num_workers; 0 loads in the "
                        "training process); torch's own threads are --torch_threads")
    g.add_argument("--batch_size", type=int, default=1, help="batch size per process")
    g.add_argument("--load_size", type=int, default=286, help="scale images to this size")
    g.add_argument("--crop_size", type=int, default=256, help="then crop to this size")
    g.add_argument("--max_dataset_size", type=float, default=math.inf,
                   help="use at most this many images per domain (synthetic: items)")
    g.add_argument("--preprocess", default="resize_and_crop",
                   choices=PREPROCESS,
                   help="scaling and cropping at load time")
    g.add_argument("--no_flip", action="store_true", help="no random horizontal flips")
    g = p.add_argument_group("schedule and checkpoints")
    g.add_argument("--n_epochs", type=int, default=None, help="epochs at the initial learning rate (200; fastcut 150)")
    g.add_argument("--n_epochs_decay", type=int, default=None,
                   help="epochs of linear decay to zero (200; fastcut 50)")
    g.add_argument("--lr", type=float, default=0.0002, help="Adam learning rate")
    g.add_argument("--beta1", type=float, default=0.5, help="Adam beta1")
    g.add_argument("--beta2", type=float, default=0.999, help="Adam beta2")
    g.add_argument("--lr_policy", default="linear", choices=LR_POLICIES, help="learning-rate schedule")
    g.add_argument("--lr_decay_iters", type=int, default=50, help="step policy: x0.1 every this many epochs")
    g.add_argument("--epoch_count", type=int, default=1, help="the starting epoch")
    g.add_argument("--continue_train", action="store_true", help="resume from checkpoints_dir/name (--epoch)")
    g.add_argument("--epoch", default="latest", help="which checkpoint to resume: latest or an epoch number")
    g.add_argument("--pretrained_name", default=None, help="resume from the checkpoints of this experiment")
    g.add_argument("--save_epoch_freq", type=int, default=5, help="save <epoch>_net_*.pth every this many epochs")
    g.add_argument("--save_latest_freq", type=int, default=5000, help="save latest_net_*.pth every this many images")
    g.add_argument("--display_freq", type=int, default=400,
                   help="write a sample grid and the loss plot every this many images")
    g.add_argument("--print_freq", type=int, default=100, help="log losses every this many images")
    _bool(g, "--tensorboard", "also log losses, learning rate, evaluations, sample grids and (qs) the selection "
          "picture to <checkpoints_dir>/<name>/tensorboard (needs the tensorboard package)", default=False)
    g.add_argument("--max_steps", type=int, default=0, help="stop after this many steps in total (0: no limit)")
    g.add_argument("--ema_decay", type=float, default=0.999,
                   help="keep an exponential moving average of G's weights with this decay (warmed up as "
                        "min(decay, (1+t)/(10+t)) at update t), saved as <which>_net_G_ema.pth and used for "
                        "evaluation, test grids, best_net_* and by qsattn-translate/qsattn-viz; 0: none "
                        "(net_G always holds the raw weights, as CUT's)")
    g.add_argument("--nonfinite", default="stop", choices=NONFINITE_POLICIES,
                   help="a step with a non-finite loss: stop: end the run at the next log or save (exit 3), "
                        "saving nothing after it; skip: skip optimiser updates whose gradients are not finite, "
                        "as AMP's GradScaler does, counting the skipped steps in the log")
    g.add_argument("--nonfinite_patience", type=int, default=20,
                   help="--nonfinite skip: stop (exit 3) after this many consecutive skipped steps")
    g = p.add_argument_group("evaluation (qsattn-eval's metrics on the test split during training)")
    g.add_argument("--eval_freq", type=int, default=0,
                   help="evaluate the test split every this many epochs and after the last (0: never); "
                        "logs eval_log.jsonl and keeps the best epoch's G as best_net_G.pth and its EMA as "
                        "best_net_G_ema.pth (cycle_gan: G_A)")
    g.add_argument("--eval_metrics", default="auto",
                   help="comma list of fid, kid, swd, synthetic; auto: swd (+ synthetic on the synthetic "
                        "set) + fid,kid when Inception weights are found")
    g.add_argument("--eval_phase", default="test", help="test split folders: <dataroot>/<eval_phase>A, B")
    g.add_argument("--eval_num_test", type=int, default=0,
                   help="test images per folder (0: all; synthetic: items, 0 meaning 100)")
    g.add_argument("--inception_weights", "--inception-weights", default=None,
                   help="FID Inception weights file (else $QSATTN_INCEPTION_WEIGHTS, then torch hub's cache)")
    g.add_argument("--kid_subsets", type=int, default=100, help="KID: number of random subsets")
    return p


def parse(argv=None) -> argparse.Namespace:
    """Parse ``argv``; defaults: CUT's, then the model's, then the demo's (with ``--demo``), then the
    flags given. Validates the combination."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    model = first.model or ("qs" if first.demo else "cut")
    if first.CUT_mode:
        model = "fastcut" if first.CUT_mode.lower() == "fastcut" else "cut"
    defaults = {"n_epochs": 200, "n_epochs_decay": 200, "flip_equivariance": False, **MODELS[model].DEFAULTS}
    if first.demo:
        defaults.update(demo.SETTINGS)
    defaults["model"] = model
    parser.set_defaults(**defaults)
    opt = parser.parse_args(argv)
    opt.nce_layers_list = _layer_list(parser, "--nce_layers", opt.nce_layers)
    opt.qs_layers_list = (list(opt.nce_layers_list) if str(opt.qs_layers).strip() == "all"
                          else _layer_list(parser, "--qs_layers", opt.qs_layers))
    bad = [i for i in opt.qs_layers_list if i not in opt.nce_layers_list]
    if bad:
        parser.error(f"--qs_layers {bad} are not among --nce_layers {opt.nce_layers}")
    if opt.dataset_mode == "unaligned" and not opt.dataroot:
        parser.error("--dataroot is required with --dataset_mode unaligned "
                         "(or try --demo / --dataset_mode synthetic)")
    if opt.eval_freq < 0 or opt.eval_num_test == 1 or opt.eval_num_test < 0 or opt.kid_subsets < 1:
        parser.error("--eval_freq must be >= 0, --eval_num_test 0 (all) or >= 2, and --kid_subsets >= 1")
    for name in ("batch_size", "crop_size", "load_size", "num_patches", "ngf", "ndf", "netF_nc", "max_dataset_size",
                 "nonfinite_patience"):
        if getattr(opt, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(opt, name)}")
    if not 0 <= opt.ema_decay < 1:
        parser.error(f"--ema_decay must lie in [0, 1) (0: no EMA), got {opt.ema_decay}")
    if opt.pool_size < 0 or min(opt.lambda_A, opt.lambda_B, opt.lambda_identity) < 0:
        parser.error("--pool_size, --lambda_A, --lambda_B and --lambda_identity must be >= 0")
    if opt.model == "cycle_gan" and opt.lambda_identity > 0 and opt.input_nc != opt.output_nc:
        parser.error("--lambda_identity > 0 needs --input_nc == --output_nc (G_A(B) is compared with B)")
    if not opt.synthetic_period_scale > 0:
        parser.error(f"--synthetic_period_scale must be > 0, got {opt.synthetic_period_scale}")
    return opt
