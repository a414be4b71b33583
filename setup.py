"""Build and install qsattn_fast.

``pip install --no-build-isolation -e .`` with torch already installed (docs/design.md §9: a plain ``torch``
requirement would pull a CUDA build). ``kernels/`` and ``train/`` install as ``qsattn_fast.kernels``
and ``qsattn_fast.train``.

The compiled extension ``qsattn_fast._C`` (the ``native`` backend) is built from ``csrc/``:
the C++/OpenMP CPU kernels always; the CUDA kernels (``csrc/*.cu`` and their torch glue
``csrc/cuda_ops.cpp``) when torch has CUDA and nvcc is found, or when ``QSATTN_FORCE_CUDA=1``.
Environment switches: ``QSATTN_SKIP_BUILD=1`` (pure-Python install, no extension),
``QSATTN_DEBUG=1`` (``-O0 -g`` instead of the release ``-O3 -g0``), ``TORCH_CUDA_ARCH_LIST``
(default ``8.0;9.0``), ``MAX_JOBS`` (parallel compile jobs, read by torch's ninja build).
"""
import glob
import os
import shutil

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def _extension():
    """(ext_modules, cmdclass) for qsattn_fast._C, or nothing when QSATTN_SKIP_BUILD is set."""
    if _flag("QSATTN_SKIP_BUILD"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    opt = ["-O0", "-g"] if _flag("QSATTN_DEBUG") else ["-O3", "-g0"]
    # -fno-trapping-math lets GCC vectorise the exp loops' selects with AVX2 (without it, computing both
    # arms of `x < lo ? 0 : e^x` counts as speculating a trap); values are unchanged.
    cxx = opt + ["-fopenmp", "-fno-trapping-math"]
    sources = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "*_cpu.cpp")))
    sources += ["csrc/cpu_common.cpp", "csrc/ops.cpp"]
    kwargs = dict(name="qsattn_fast._C", include_dirs=[os.path.join(HERE, "csrc")], extra_link_args=["-fopenmp"])
    has_nvcc = shutil.which("nvcc") is not None or CUDA_HOME is not None
    if _flag("QSATTN_FORCE_CUDA") or (torch.version.cuda is not None and has_nvcc):
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "*.cu")))
        sources += ["csrc/cuda_ops.cpp"]
        nvcc = opt[:1] + ["-lineinfo"] if not _flag("QSATTN_DEBUG") else ["-O0", "-g", "-G"]
        ext = CUDAExtension(sources=sources, extra_compile_args={"cxx": cxx + ["-DQSATTN_WITH_CUDA"], "nvcc": nvcc},
                            **kwargs)
    else:
        ext = CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extension()

setup(
    name="qsattn_fast",
    version="0.1.0",
    description="QS-Attn (query-selected attention for contrastive I2I translation) without the N x N matrix",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=["qsattn_fast", "qsattn_fast.backends", "qsattn_fast.kernels", "qsattn_fast.train"],
    package_dir={"qsattn_fast": "qsattn_fast", "qsattn_fast.kernels": "kernels", "qsattn_fast.train": "train"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=["torch>=2.4,<3", "numpy", "pillow", "tqdm", "matplotlib"],
    entry_points={"console_scripts": ["qsattn-train = qsattn_fast.train.trainer:main",
                                      "qsattn-translate = qsattn_fast.train.translate:main",
                                      "qsattn-eval = qsattn_fast.train.eval_cli:main",
                                      "qsattn-viz = qsattn_fast.train.viz:main",
                                      "qsattn-data = qsattn_fast.train.data_cli:main"]},
    extras_require={
        "triton": ["triton>=3.5,<3.10"],   # CI runs 3.9 and 3.5.1; 3.4 cannot build the float64 kernels
        "test": ["pytest", "pytest-benchmark"],
        "tensorboard": ["tensorboard"],   # qsattn-train --tensorboard
    },
)
