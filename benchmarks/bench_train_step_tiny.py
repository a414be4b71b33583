"""pytest-benchmark, CPU, one thread: a tiny training step (32x32, ngf 8, 6 blocks, 16 patches) of cut and of
qs (reference and torch backends, and with --qs_detach_attention), the QS-Attn ops of such a step alone, and
one round of the side-by-side report over layer sets and modes (its rows checked).
CI runs each once (``--benchmark-disable``); the full-size report is ``bench_train_step.py``'s command line.

    python -m pytest benchmarks/bench_train_step_tiny.py
"""
import pytest
import torch

from bench_train_step import make_step, qsattn_calls, released_attention_bytes, report, run_ops

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


def bench_report_of_layer_sets_and_modes(benchmark):
    kw = dict(size=32, ngf=8, modes=("global", "local"), gpu_ids="-1", steps=1, warmup=0, backends=["torch"],
              breakdown=True, extra=TINY, layer_sets=("default", "all"), memory=True)
    rows = benchmark.pedantic(report, kwargs=kw, rounds=1, iterations=1)
    assert [(r["layers"], r["mode"], r["what"]) for r in rows[1:]] == [
        (layers, mode, what) for layers in ("default", "all") for mode in ("global", "local")
        for what in ("step", "ops fwd", "ops fwd+bwd", "step, detached attention")]
    assert all("error" not in r and len(r["times_ms"]) == 1 for r in rows)
    assert all(("peak_extra_bytes" in r) == r["what"].startswith("step") for r in rows)
    for layers in ("default", "all"):
        for mode in ("global", "local"):
            calls = qsattn_calls(*tiny_step("qs", "torch", "--qs_mode", mode,
                                            *([] if layers == "default" else ["--qs_layers", "all"])))
            assert len(calls) == (4 if layers == "default" else 10)
            row = next(r for r in rows if (r["layers"], r["mode"], r["what"]) == (layers, mode, "step"))
            assert row["released_attention_bytes"] == sum(released_attention_bytes(f, kw) for f, _, kw in calls)
            if mode == "global":   # one fp32 B x N x N per call
                assert row["released_attention_bytes"] == sum(4 * (f.shape[2] * f.shape[3]) ** 2 for f, _, _ in calls)
