"""Build and install qsattn_fast.

``pip install --no-build-isolation -e .`` with torch already installed (DESIGN §6: a plain ``torch``
requirement would pull a CUDA build). ``kernels/`` and ``train/`` install as ``qsattn_fast.kernels``
and ``qsattn_fast.train``. The compiled extension ``qsattn_fast._C`` is not part of this release yet;
``python setup.py build_ext --inplace`` runs and builds nothing.
"""
from setuptools import setup

setup(
    name="qsattn_fast",
    version="0.1.0",
    description="QS-Attn (query-selected attention for contrastive I2I translation) without the N x N matrix",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=["qsattn_fast", "qsattn_fast.kernels", "qsattn_fast.train"],
    package_dir={"qsattn_fast": "qsattn_fast", "qsattn_fast.kernels": "kernels", "qsattn_fast.train": "train"},
    install_requires=["torch>=2.4,<3", "numpy", "pillow", "tqdm"],
    entry_points={"console_scripts": ["qsattn-train = qsattn_fast.train.trainer:main",
                                      "qsattn-translate = qsattn_fast.train.translate:main"]},
    extras_require={
        "triton": ["triton>=3.0"],
        "test": ["pytest", "pytest-benchmark"],
    },
)
