"""pytest-benchmark, CPU, one thread: a tiny training step (32x32, ngf 8, 6 blocks, 16 patches) of cut and of
qs (reference and torch backends, and with --qs_detach_attention), and the QS-Attn ops of such a step alone.
CI runs each once (``--benchmark-disable``); the full-size report is ``bench_train_step.py``'s command line.

    python -m pytest benchmarks/bench_train_step_tiny.py
"""
import pytest
import torch

from bench_train_step import make_step, qsattn_calls, run_ops

TINY = ["--netG", "resnet_6blocks", "--num_patches", "16", "--netF_nc", "16"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_step(model_name, backend="auto", *flags):
    return make_step(model_name, backend, size=32, ngf=8, extra=[*TINY, *flags])


@pytest.mark.parametrize("config", ["cut", "qs-reference", "qs-torch", "qs-torch-detached"])
def bench_train_step_tiny_cpu(benchmark, config):
    model_name, _, rest = config.partition("-")
    backend, _, detached = rest.partition("-")
    model, data = tiny_step(model_name, backend or "auto", *(["--qs_detach_attention"] if detached else []))
    benchmark(model.optimize, data)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def bench_qsattn_ops_of_a_tiny_step(benchmark, backward):
    calls = qsattn_calls(*tiny_step("qs", "torch"))
    assert len(calls) == 4 and all(f.requires_grad and f is values[0] for f, values, _ in calls)
    benchmark(run_ops, calls, backward)
