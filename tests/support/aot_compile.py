"""Compile every Triton kernel ahead of time for an NVIDIA target, without a GPU (triton.compile with an
explicit GPUTarget runs the whole pipeline to PTX and ptxas). Run in a process where the kernels are
not interpreted: ``python tests/support/aot_compile.py [arch ...]``; prints one line per specialisation and
exits non-zero if any fails. Used by tests/ops/test_triton_aot_compile.py; catches GPU-only typing errors that the
interpreter cannot see (dot operand types, input_precision, atomics, integer widths)."""
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from qsattn_fast.kernels import entropy_global, entropy_local, route_global, route_local, select

TY = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "fp64": "fp64"}


def specs():
    """(name, kernel, pointer dtypes by argument, constexprs) for each specialisation to compile."""
    for dt, precs in (("fp32", ("tf32x3", "ieee", "tf32", "bf16")), ("fp16", ("native",)),
                      ("bf16", ("native",)), ("fp64", ("native",))):
        acc = "fp64" if dt == "fp64" else "fp32"
        p2 = "tf32x3" if dt in ("fp16", "bf16") else None
        for prec in precs:
            second = p2 or prec
            yield (f"entropy_global/{dt}/{prec}", entropy_global._entropy_global_kernel,
                   dict(x_ptr=dt, out_ptr=acc), dict(BM=64, BN=64, BC=32, DOT_PREC=prec, INTERP=False))
            common = dict(DOT_PREC=prec, PREC2=second, INTERP=False)
            tiles = route_global._GPU_TILES
            yield (f"route_global_fwd/{dt}/{prec}", route_global._route_global_fwd_kernel,
                   dict(x_ptr=dt, idx_ptr="i64", v_ptr=dt, out_ptr=acc, lse_ptr=acc),
                   dict(common, WRITE_LSE=True, **tiles["fwd"]))
            bwd = dict(x_ptr=dt, idx_ptr="i64", v0_ptr=dt, v1_ptr=dt, lse_ptr=acc, d_ptr=acc, go0_ptr=acc, go1_ptr=acc)
            yield (f"route_global_bwd/{dt}/{prec}", route_global._route_global_bwd_kernel,
                   dict(bwd, dk_ptr=acc, dv0_ptr=acc, dv1_ptr=acc, dq_ptr=acc), dict(common, **tiles["bwd"]))
        local = dict(WINDOW=7, W2P=64, BP=32)
        yield (f"entropy_local/{dt}", entropy_local._entropy_local_kernel, dict(x_ptr=dt, out_ptr=acc), local)
        yield (f"route_local_fwd/{dt}", route_local._route_local_fwd_kernel,
               dict(x_ptr=dt, idx_ptr="i64", v_ptr=dt, out_ptr=acc, lse_ptr=acc), dict(local, WRITE_LSE=True))
        yield (f"route_local_bwd_values/{dt}", route_local._route_local_bwd_values_kernel,
               dict(x_ptr=dt, idx_ptr="i64", v_ptr=dt, lse_ptr=acc, go_ptr=acc, da_ptr=acc, dv_ptr=acc),
               dict(local, BP=16, FIRST=False))
        yield (f"route_local_bwd_feat/{dt}", route_local._route_local_bwd_feat_kernel,
               dict(x_ptr=dt, idx_ptr="i64", lse_ptr=acc, da_ptr=acc, dx_ptr=acc), dict(local, BP=16))
    yield ("select/fp32", select._select_kernel, dict(e_ptr="fp32", vals_ptr="fp32", idx_ptr="i64"), dict(BLOCK=512))


def compile_one(kernel, ptrs, constexprs, arch, num_warps=8):
    sig = {}
    for name in kernel.arg_names:
        sig[name] = "constexpr" if name in constexprs else (f"*{ptrs[name]}" if name.endswith("_ptr") else "i32")
    return triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs),
                          target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps))


def main(archs):
    failed = 0
    for arch in archs:
        for name, kernel, ptrs, constexprs in specs():
            try:
                k = compile_one(kernel, ptrs, constexprs, arch, num_warps=4 if "local" in name else 8)
                ptx = k.asm["ptx"]
                tensor_core = "mma" in ptx
                print(f"ok   sm_{arch} {name}: shared {k.metadata.shared} B, tensor cores: {tensor_core}", flush=True)
            except Exception as exc:  # report every failure, then exit non-zero
                failed += 1
                print(f"FAIL sm_{arch} {name}: {type(exc).__name__}: {str(exc)[:2000]}", flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(1 if main([int(a) for a in sys.argv[1:]] or [90]) else 0)
