"""``qsattn-train``: the training loop (CUT's train.py) with exact resume, saving on a stop signal,
non-finite guards and DDP.

Outputs under ``<checkpoints_dir>/<name>/``: ``{latest|<epoch>}_net_{G,F,D}.pth`` (CUT's files; with
``--model cycle_gan`` ``_net_{G_A,G_B,D_A,D_B}.pth``), ``{latest|<epoch>}_state.pth`` (resume state),
``loss_log.jsonl`` (one JSON record per logged step), ``loss_plot.png``, ``samples/*.png`` (one row per
image, tiles of at least 128 px under a header naming the columns: real A | fake B | real B | idt B;
cycle_gan: real A | fake B | rec A | idt B | real B | fake A | rec B | idt A), ``opt.json`` (every
option; ``qsattn-translate`` builds the generator from it);
for ``--model qs`` ``selection_log.jsonl`` (per epoch: how QS-Attn's selection relates to the released
code's ties, see :func:`.diagnostics.selection_stats`); with
``--eval_freq N``: ``eval_log.jsonl`` (the test split's metrics every N epochs and after the last, see
:class:`.evaluation.TestSetEvaluator`), ``samples/test_epoch<N>.png`` (the first 8 test translations),
``eval_best.json`` and ``best_net_G.pth`` (cycle_gan: ``best_net_G_A.pth``; the epoch with the lowest
primary metric: papers report the best epoch, the last one is in the log), and for ``--model qs``
``samples/selection_epoch<N>.png`` (QS-Attn's selection on the first test image, :mod:`.viz`); the last
evaluation's numbers are printed at the end. ``--tensorboard``: the same losses, learning rate,
evaluations and pictures under ``tensorboard/``.

Resume exactness: data order and augmentation depend only on (seed, epoch, position) (see
:mod:`.data`); the learning rate only on the epoch; flips (cut/fastcut/qs) and the image pools' draws
(cycle_gan) come from the model's generator and the random patch ids of netF from torch's global
generator, which after initialisation serves nothing else; both generators' states, the pools' images,
the optimisers, epoch and iteration are in the resume state. So on CPU the steps after
``--continue_train`` repeat those of an uninterrupted run bit for bit (one process: the state is rank
0's; other ranks reseed their generators from the step and start with empty pools).

Stop signals: SIGINT, SIGTERM or SIGUSR1 ends the run after the step in progress, saves ``latest`` and
exits with 128 + the signal's number (130, 143, 138); a second one aborts at once (:meth:`Trainer._on_signal`).
Non-finite losses (``--nonfinite``): ``stop`` notes the first such step on the device and reads it at log
and save boundaries, then stops (exit 3) without saving; ``skip`` skips optimiser updates whose gradients
are not finite (:meth:`.model.GANModel._update`). No checkpoint holds a non-finite tensor
(:func:`.checkpoint.save_checkpoint` checks), and each is all or nothing.

Several processes: ``torchrun --nproc_per_node N qsattn-train ...`` (gloo with ``--gpu_ids -1``, NCCL
on GPUs; process i uses GPU ``gpu_ids[local_rank]``). Each process takes its share of every epoch;
rank 0 writes the files; the logged losses are the mean over the processes; one all-reduce per step makes
them stop at the same step (:meth:`Trainer._stop_code`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

from . import checkpoint as ckpt, demo
from .cli import one_line_errors
from .data import EpochSampler, SyntheticDataset, UnalignedDataset, dequantize
from .device import pick_device
from .evaluation import TestSetEvaluator, jsonable
from .metrics import MEANINGS
from .models import create_model
from .options import parse
from .viz import plot_losses, save_grid

LOG_NAME = "loss_log.jsonl"
EVAL_LOG = "eval_log.jsonl"
EVAL_BEST = "eval_best.json"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)   # saved and exit 128 + the signal's number
REPEAT_S = 1.0   # the same stop signal again within this many seconds is the same request (see _on_signal)
EXIT_NONFINITE = 3
NO_STEP = 2 ** 62   # first_bad's value while every loss has been finite


def training_device(gpu_ids: str, local_rank: int = 0) -> torch.device:
    """:func:`.device.pick_device` of ``--gpu_ids``; a GPU is made current, with cuDNN autotuning on (CUT's
    networks have fixed shapes per run)."""
    dev = pick_device(gpu_ids, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
    return dev


def make_dataset(opt):
    if opt.dataset_mode == "synthetic":
        return SyntheticDataset(opt.seed, int(min(opt.synthetic_size, opt.max_dataset_size)), opt.load_size,
                                opt.crop_size, opt.no_flip, opt.serial_batches, opt.synthetic_task,
                                opt.synthetic_period_scale)
    return UnalignedDataset(opt.dataroot, opt.phase, opt.max_dataset_size, opt.preprocess, opt.load_size,
                            opt.crop_size, opt.no_flip, opt.serial_batches, opt.skip_bad_images)


def _rng_state(device):
    cuda = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state(state["cuda"][0], device)


def open_tensorboard(log_dir: str):
    """A TensorBoard writer into ``log_dir``; ValueError (one line) when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
    return SummaryWriter(log_dir)


class Trainer:
    """Builds everything from the parsed options and runs the epochs (:meth:`run`). ``metric_note``: a
    hook, metric name -> text appended to that metric's line of the final summary (the demo's targets)."""

    def __init__(self, opt, metric_note=None):
        self.opt = opt
        self.metric_note = metric_note or (lambda metric: "")
        if opt.torch_threads > 0:
            torch.set_num_threads(opt.torch_threads)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = training_device(opt.gpu_ids, int(os.environ.get("LOCAL_RANK", "0")))
        if opt.bf16 and self.device.type != "cuda":
            raise ValueError("--bf16 needs a GPU (--gpu_ids >= 0)")
        if self.rank == 0:
            name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
            print(f"qsattn-train: training on {self.device} ({name}; --gpu_ids {opt.gpu_ids})", file=sys.stderr)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.save_dir = os.path.join(opt.checkpoints_dir, opt.name)
        self.log_path = os.path.join(self.save_dir, LOG_NAME)
        self.dataset = make_dataset(opt)   # validates the data (and the evaluation's) before anything is written
        board = opt.tensorboard and self.rank == 0
        self.board = open_tensorboard(os.path.join(self.save_dir, "tensorboard")) if board else None
        self.evaluator, self.best, self.last_eval = None, None, None
        if self.rank == 0 and opt.eval_freq > 0:
            self.evaluator = TestSetEvaluator(opt, self.device, log=lambda m: print(m, file=sys.stderr))
        torch.manual_seed(opt.seed)
        self.model = create_model(opt, self.device, self.world, self.rank)
        if self.rank > 0:  # patch ids differ across processes, as their data do
            torch.manual_seed(opt.seed * 1_000_003 + self.rank)
        self.epoch, self.epoch_iter, self.step = opt.epoch_count, 0, 0
        self.stop_signal, self.stop_time = None, None   # the first stop signal received, and when
        # --nonfinite stop: the first step with a non-finite loss and its losses, on the device (no host sync)
        self.first_bad = torch.full((), NO_STEP, dtype=torch.long, device=self.device)
        self.first_bad_losses = torch.zeros(len(self.model.loss_names()), device=self.device)
        self.first_bad_anywhere = NO_STEP   # with several processes: the first over all of them (host)
        self.skipped_steps, self.skip_streak = 0, 0   # --nonfinite skip: in all, and in a row
        self.last_saved = None   # (which, step) of the last checkpoint written or loaded
        self.tty = sys.stderr.isatty()   # progress bars on a terminal, one line per logged step in a log
        if opt.continue_train:
            self._resume()
        if self.rank == 0:
            self._trim_log(self.log_path)
            if self.model.DIAGNOSTICS_LOG:
                self._trim_log(os.path.join(self.save_dir, self.model.DIAGNOSTICS_LOG))
            if self.evaluator is not None:
                self.best = self._trim_log(os.path.join(self.save_dir, EVAL_LOG), self.evaluator.primary)
            os.makedirs(os.path.join(self.save_dir, "samples"), exist_ok=True)
            with open(os.path.join(self.save_dir, "opt.json"), "w") as f:
                json.dump({k: v for k, v in vars(opt).items() if k != "max_dataset_size"}, f, indent=1)

    # ---- checkpoints -------------------------------------------------------------------------
    def _resume(self):
        opt = self.opt
        load_dir = os.path.join(opt.checkpoints_dir, opt.pretrained_name or opt.name)
        if self.rank == 0:   # a save cut short: finish it or drop it, before any process reads the set
            ckpt.recover(load_dir)
        if self.world > 1:
            dist.barrier()
        self._load_networks(load_dir)
        self.last_saved = (opt.epoch, None)
        spath = ckpt.state_path(load_dir, opt.epoch)
        if not os.path.exists(spath):  # CUT's checkpoints: weights only, start at --epoch_count
            print(f"qsattn-train: no resume state {spath}; loaded the networks, starting at epoch {self.epoch}")
            return
        state = ckpt.load_weights_only(spath)
        for k, o in self.model.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        self.epoch, self.epoch_iter, self.step = state["epoch"], state["epoch_iter"], state["step"]
        self.skipped_steps, self.skip_streak = state.get("nonfinite_skipped", 0), state.get("nonfinite_streak", 0)
        self.model.ema_updates = state.get("ema_updates", 0)
        self.last_saved = (opt.epoch, self.step)
        if self.rank == 0:
            _set_rng_state(state["rng"], self.device)
            self.model.load_state_for_resume(state)
        else:
            torch.manual_seed(opt.seed * 1_000_003 + self.rank + self.step)
            self.model.reseed(self.step)

    def _load_networks(self, load_dir):
        """The nets of checkpoint --epoch; without its EMA file (CUT's checkpoints, a run that had
        --ema_decay 0) the EMA net starts from the loaded translator."""
        model, which = self.model, self.opt.epoch
        ema_file = ckpt.net_path(load_dir, which, model.ema_name)
        if model.ema is None or os.path.isfile(ema_file):
            ckpt.load_networks(load_dir, which, model.checkpoint_nets)
            return
        ckpt.load_networks(load_dir, which, model.nets)
        model.ema.load_state_dict(model.nets[model.TRANSLATOR].state_dict())
        if self.rank == 0:
            print(f"qsattn-train: no {ema_file}; the EMA generator starts from the loaded {model.TRANSLATOR}")

    def save(self, which):
        """Write checkpoint ``which``, ``<which>_net_*.pth`` and ``<which>_state.pth``, all or nothing
        (:func:`.checkpoint.save_checkpoint`; rank 0), once :meth:`_guard` found every loss finite."""
        self._guard()
        if self.rank != 0:
            return
        state = {"optimizers": {k: o.state_dict() for k, o in self.model.optimizers.items()},
                 "epoch": self.epoch, "epoch_iter": self.epoch_iter, "step": self.step,
                 "rng": _rng_state(self.device), "lr": self.model.optimizers["G"].param_groups[0]["lr"],
                 "nonfinite_skipped": self.skipped_steps, "nonfinite_streak": self.skip_streak,
                 "ema_updates": self.model.ema_updates,
                 **self.model.state_for_resume()}
        ckpt.save_checkpoint(self.save_dir, which, self.model.checkpoint_nets, state)
        self.last_saved = (which, self.step)

    # ---- non-finite values ---------------------------------------------------------------------
    def _watch(self, losses, skipped: bool):
        """After a step. stop: note it on the device if one of its ``losses`` is not finite (no host
        sync). skip: count a step with a ``skipped`` update; too many in a row raise NonFiniteError."""
        if self.opt.nonfinite == "stop":
            values = torch.stack(list(losses.values()))
            new = ~torch.isfinite(values).all() & (self.first_bad == NO_STEP)
            self.first_bad = torch.where(new, self.step, self.first_bad)
            self.first_bad_losses = torch.where(new, values, self.first_bad_losses)
            return
        self.skipped_steps += skipped
        self.skip_streak = self.skip_streak + 1 if skipped else 0
        if self.skip_streak >= self.opt.nonfinite_patience:
            raise ckpt.NonFiniteError(
                f"{self.skip_streak} steps in a row with non-finite gradients, skipped (steps "
                f"{self.step - self.skip_streak + 1}-{self.step}, --nonfinite_patience {self.opt.nonfinite_patience}); "
                f"stopped, {self._kept()}")

    def _guard(self):
        """stop: raise NonFiniteError naming the first step with a non-finite loss, if there was one (on
        any process, see :meth:`_stop_code`). A host read: run at log and save boundaries only."""
        step = self.first_bad_anywhere if self.world > 1 else int(self.first_bad)
        if step == NO_STEP:
            return
        values = zip(self.model.loss_names(), self.first_bad_losses.tolist())
        which = (", ".join(f"{name} {v}" for name, v in values if not math.isfinite(v))
                 if int(self.first_bad) == step else "on another process")
        raise ckpt.NonFiniteError(f"non-finite loss at step {step} ({which}); stopped, {self._kept()} "
                                  "(--nonfinite skip skips such steps)")

    def _kept(self):
        """Where the last good checkpoint is, for the messages that stop a run."""
        if self.last_saved is None:
            return "no checkpoint was written"
        which, step = self.last_saved
        return f"the last checkpoint is {self.save_dir}/{which}_*" + (f" (step {step})" if step is not None else "")

    # ---- logs ----------------------------------------------------------------------------------
    def _trim_log(self, path, primary=None):
        """Keep a log's records up to the current step (a resumed run rewrites what came after); returns
        the kept record with the lowest ``primary`` number, if asked."""
        if not os.path.exists(path):
            return None
        with open(path) as f:
            keep = [line for line in f if line.strip() and json.loads(line)["step"] <= self.step]
        with open(path, "w") as f:
            f.writelines(keep)
        records = [json.loads(line) for line in keep]
        scored = [r for r in records if primary and r["metrics"].get(primary) is not None]
        return min(scored, key=lambda r: r["metrics"][primary]) if scored else None

    def _log(self, losses, lr, t0):
        rec = {"epoch": self.epoch, "epoch_iter": self.epoch_iter, "step": self.step,
               "images": self.step * self.opt.batch_size * self.world, "lr": lr, "time": round(time.time() - t0, 3),
               "losses": {k: float(v) for k, v in losses.items()}}
        if self.opt.nonfinite == "skip":
            rec["skipped"] = self.skipped_steps
        with open(self.log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.board is not None:
            for k, v in rec["losses"].items():
                self.board.add_scalar(f"loss/{k}", v, self.step)
            self.board.add_scalar("lr", lr, self.step)
            if "skipped" in rec:
                self.board.add_scalar("skipped_steps", self.skipped_steps, self.step)
        return rec

    def _board_image(self, tag, path):
        """The PNG at ``path`` (a sample grid, the selection picture) to TensorBoard, if it is on."""
        if self.board is not None:
            import numpy as np
            from PIL import Image
            with Image.open(path) as img:
                self.board.add_image(tag, np.asarray(img.convert("RGB")), self.step, dataformats="HWC")

    def write_plot(self):
        with open(self.log_path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        plot_losses(records, os.path.join(self.save_dir, "loss_plot.png"))

    # ---- the loop ------------------------------------------------------------------------------
    def _every(self, freq_images):
        """True when the image count crossed a multiple of ``freq_images`` with the last step."""
        per_step = self.opt.batch_size * self.world
        return freq_images > 0 and (self.step * per_step) // freq_images > ((self.step - 1) * per_step) // freq_images

    def _log_due(self):
        """True on the steps whose losses are logged (the first, then every ``print_freq`` images)."""
        return self._every(self.opt.print_freq) or self.step == 1

    def _mean_over_ranks(self, losses):
        """The losses averaged over the processes: one all-reduce, which every rank joins on the same
        (logged) steps."""
        t = torch.stack(list(losses.values())).to(self.device)
        dist.all_reduce(t)
        return dict(zip(losses, t / self.world))

    def _stop_code(self) -> int | None:
        """None to go on after this step, else the exit code of stopping now: 128 + the number of a stop
        signal received, or 0 at ``--max_steps``. With several processes one all-reduce (MAX) per step
        gives every process the same signal, ``--max_steps`` and first step with a non-finite loss, so
        that they all stop at the same step."""
        signum, at_max = self.stop_signal or 0, self.opt.max_steps > 0 and self.step >= self.opt.max_steps
        if self.world > 1:
            mine = torch.tensor([signum, at_max], dtype=torch.float64, device=self.device)
            t = torch.cat([mine, -self.first_bad.double().view(1)])
            dist.all_reduce(t, dist.ReduceOp.MAX)
            signum, at_max, minus_first = (int(v) for v in t.tolist())
            self.first_bad_anywhere = -minus_first
        return 128 + signum if signum else 0 if at_max else None

    def run(self) -> int:
        """Train until the last epoch, ``--max_steps`` or a stop signal; returns the exit code (0, or
        128 + the signal's number)."""
        t0 = time.time()
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS} if self._main_thread() else {}
        try:
            while self.epoch <= self.last_epoch:
                code = self._run_epoch(t0)
                if code is not None:
                    return code
                self._end_epoch()
            if self.rank == 0:
                self.write_plot()
                print(f"qsattn-train: done in {time.time() - t0:.0f} s; checkpoints, samples and loss plot in "
                      f"{self.save_dir}")
                self._print_summary()
            return 0
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self.board is not None:
                self.board.close()

    @property
    def last_epoch(self) -> int:
        return self.opt.n_epochs + self.opt.n_epochs_decay

    def _loader(self):
        """The current epoch's batches of this process, from step ``epoch_iter`` on (a resumed epoch)."""
        opt = self.opt
        sampler = EpochSampler(len(self.dataset), opt.seed, self.epoch, self.rank, self.world, opt.serial_batches,
                               skip=self.epoch_iter * opt.batch_size)
        return torch.utils.data.DataLoader(self.dataset, opt.batch_size, sampler=sampler, num_workers=opt.num_threads,
                                           pin_memory=self.device.type == "cuda",
                                           generator=torch.Generator())  # keeps the global RNG untouched

    def _run_epoch(self, t0) -> int | None:
        """The steps of the current epoch; the exit code if the run stops within it (saved), else None."""
        from tqdm import tqdm
        model = self.model
        lr = model.set_lr(self.epoch)
        self.dataset.finetuning = self.epoch > self.opt.n_epochs
        loader = self._loader()
        self.epoch_steps = self.epoch_iter + len(loader)   # a resumed epoch skips its first steps
        bar = tqdm(loader, desc=f"epoch {self.epoch}/{self.last_epoch}", disable=self.rank != 0 or not self.tty,
                   dynamic_ncols=True, unit="it")
        for batch in self._batches(bar):
            skipped = model.skipped_updates
            losses = model.optimize(batch)
            self.epoch_iter += 1
            self.step += 1
            self._watch(losses, model.skipped_updates > skipped)
            code = self._stop_code()
            if self._log_due():
                self._guard()
                if self.world > 1:
                    losses = self._mean_over_ranks(losses)
            if self.rank == 0:
                self._after_step(losses, lr, t0, bar)
            if self._every(self.opt.save_latest_freq) or code is not None:
                self.save("latest")
            if code is not None:
                bar.close()
                self._say_stopped(code)
                return code
        bar.close()
        return None

    def _say_stopped(self, code):
        if self.rank == 0:
            why = f"stopped by {signal.Signals(code - 128).name}" if code else \
                f"--max_steps {self.opt.max_steps} reached"
            print(f"qsattn-train: {why}; saved {self.save_dir}/latest_* at step {self.step} "
                  "(--continue_train resumes)", file=sys.stderr)

    def _end_epoch(self):
        """After an epoch's last step: save latest (and the epoch's checkpoint every ``save_epoch_freq``),
        the model's diagnostics, and the evaluation every ``eval_freq`` epochs and after the last."""
        opt, finished = self.opt, self.epoch
        self.epoch, self.epoch_iter = self.epoch + 1, 0
        self.save("latest")
        if self.rank == 0 and self.model.DIAGNOSTICS_LOG:
            rec = {"epoch": finished, "step": self.step, **self.model.epoch_diagnostics()}
            with open(os.path.join(self.save_dir, self.model.DIAGNOSTICS_LOG), "a") as f:
                f.write(json.dumps(rec) + "\n")
        if finished % opt.save_epoch_freq == 0 or finished == self.last_epoch:
            self.save(finished)
        if opt.eval_freq > 0 and (finished % opt.eval_freq == 0 or finished == self.last_epoch):
            self.run_evaluation(finished)

    def _batches(self, loader):
        """The loader's batches; a data error (an image that verified but does not decode) saves the
        finished steps as ``latest`` and is raised as a ValueError that says how to resume. The stop
        signals are held while a batch is fetched: the workers the first fetch starts inherit the block,
        so a signal to the whole process group (a terminal's Ctrl-C, SLURM) reaches this process only."""
        it = iter(loader)
        while True:
            try:
                with stop_signals_held():
                    batch = next(it)
            except StopIteration:
                return
            except ValueError as e:   # a worker's error arrives with its traceback; the last line is the message
                self.save("latest")
                last = str(e).strip().splitlines()[-1]
                raise ValueError(f"{last}; saved {self.save_dir}/latest_* after step {self.step} "
                                 "(resume with --continue_train once the image is fixed or removed)") from e
            yield batch

    def run_evaluation(self, epoch):
        """Rank 0: the test split's metrics after ``epoch`` (translated by the model's translator: the EMA
        net, else G or G_A), appended to eval_log.jsonl; a new best (lowest primary metric) rewrites
        eval_best.json and best_net_<TRANSLATOR>[_ema].pth. Other ranks wait."""
        if self.rank == 0:
            t0 = time.time()
            name = self.model.TRANSLATOR
            numbers = self.evaluator.run(self.model.translator(), self.model.autocast)
            primary = self.evaluator.primary
            rec = {"epoch": epoch, "step": self.step, "primary": primary, "seconds": round(time.time() - t0, 2),
                   "metrics": jsonable(numbers)}
            with open(os.path.join(self.save_dir, EVAL_LOG), "a") as f:
                f.write(json.dumps(rec) + "\n")
            if self.best is None or numbers[primary] < self.best["metrics"][primary]:
                self.best = rec
                ckpt.save_checkpoint(self.save_dir, "best", {k: v for k, v in self.model.checkpoint_nets.items()
                                                             if k in (name, self.model.ema_name)})
                with open(os.path.join(self.save_dir, EVAL_BEST), "w") as f:
                    json.dump(rec, f, indent=1)
            self.last_eval = rec, os.path.join(self.save_dir, "samples", f"test_epoch{epoch:03d}.png")
            self.evaluator.save_grid(self.last_eval[1])
            self._board_image("test translations", self.last_eval[1])
            image = dequantize(self.evaluator.sources[:1]).to(self.device)
            for tag, path in self.model.evaluation_pictures(image, epoch, os.path.join(self.save_dir, "samples")):
                self._board_image(tag, path)
            if self.board is not None:
                for k, v in numbers.items():
                    if isinstance(v, float):
                        self.board.add_scalar(f"eval/{k}", v, self.step)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in numbers.items() if isinstance(v, float))
            print(f"qsattn-train: eval epoch {epoch}: {shown} (best {primary}: epoch {self.best['epoch']})",
                  file=sys.stderr)
        if self.world > 1:
            dist.barrier()

    def _print_summary(self):
        """After the last epoch: the held-out measures of the last evaluation, what they mean, and the
        grid of test translations (the demo's answer to "did it translate?")."""
        if self.last_eval is None:
            return
        rec, grid = self.last_eval
        m, ev = rec["metrics"], self.evaluator
        print(f"held-out test split ({len(ev.sources)} {'synthetic pairs' if ev.synthetic else 'images'}, "
              f"{ev.size}x{ev.size}) after epoch {rec['epoch']}:")
        for k, (better, meaning) in MEANINGS.items():
            if k in m:
                print(f"  {k:<16} {m[k]:.3f}  ({better} is better) {meaning}{self.metric_note(k)}")
        for k in ("fid", "kid", "swd"):
            if k in m:
                print(f"  {k:<16} {m[k]:.4g}")
        print(f"  test translations: {grid} (columns: real A | fake B{' | real B' if ev.synthetic else ''})")

    def _after_step(self, losses, lr, t0, bar):
        opt = self.opt
        if self._log_due():
            rec = self._log(losses, lr, t0)
            shown = {k: f"{v:.3f}" for k, v in rec["losses"].items()}
            if self.tty:
                bar.set_postfix(shown, refresh=False)
            else:   # a log file: one line per logged step instead of progress-bar redraws
                print(f"epoch {self.epoch}/{self.last_epoch} step {self.step} ({self.epoch_iter}/{self.epoch_steps}) "
                      f"{rec['time']:.0f} s lr {lr:.2e} " + " ".join(f"{k} {v}" for k, v in shown.items())
                      + (f" skipped {rec['skipped']}" if "skipped" in rec else ""), file=sys.stderr, flush=True)
        if self._every(opt.display_freq):
            visuals = self.model.visuals()
            grid = os.path.join(self.save_dir, "samples", f"epoch{self.epoch:03d}_step{self.step:07d}.png")
            save_grid([t[:4] for t in visuals.values()], grid, list(visuals))
            self._board_image("samples", grid)
            self.write_plot()

    @staticmethod
    def _main_thread():
        import threading
        return threading.current_thread() is threading.main_thread()

    def _on_signal(self, signum, frame):
        """The first stop signal (:data:`STOP_SIGNALS`) ends the run after the step in progress, saved; a
        second one aborts at once, nothing saved: the signal's default action, so the process ends as
        killed by it. The same signal again within :data:`REPEAT_S` seconds is the same request, not a
        second one: SLURM signals every process of a job step and torchrun forwards the signal too."""
        name = signal.Signals(signum).name
        if signum == self.stop_signal and time.monotonic() - self.stop_time < REPEAT_S:
            return
        if self.stop_signal is not None:
            print(f"\nqsattn-train: {name} again, aborting without saving", file=sys.stderr, flush=True)
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.stop_signal, self.stop_time = signum, time.monotonic()
        if self.rank == 0:
            print(f"\nqsattn-train: {name}, saving after this step ({name} again to abort)", file=sys.stderr,
                  flush=True)


@contextlib.contextmanager
def stop_signals_held():
    """The stop signals blocked in this thread while the body runs, then delivered if they came;
    processes and threads started in the body keep them blocked."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def main(argv=None) -> int:
    """Exit codes: 0 done (or ``--max_steps`` reached); 2 a usage, path, data or checkpoint-writing error;
    3 a non-finite loss or weights (:data:`EXIT_NONFINITE`); 128 + N stopped by signal N and saved: 130
    SIGINT, 143 SIGTERM, 138 SIGUSR1 (Linux's numbers). Errors are one line (``--debug``: the traceback)."""
    opt = parse(argv)
    try:
        note = demo.metric_note if opt.demo else None
        return one_line_errors("qsattn-train", lambda: Trainer(opt, note).run(), opt.debug,
                               {ckpt.NonFiniteError: EXIT_NONFINITE})
    finally:  # also when Trainer failed after joining the process group
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
