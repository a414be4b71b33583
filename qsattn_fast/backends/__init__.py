"""The backends, one module each: ``reference``, ``torch``, ``triton`` and ``native``, on the ``Backend``
class of ``base``. Importing this package registers them (qsattn_fast/registry.py).

The package is also the public ``qsattn_fast.backends()``: calling it returns the registered backends
by name, so that the function and the package can share the name (the module's class is set as the
Python data model's "customizing module attribute access" shows).
"""
import sys as _sys
import types as _types

from .. import registry as _registry
from . import base, native, reference, torch, triton  # noqa: F401  (each registers its backend)


class _CallablePackage(_types.ModuleType):
    def __call__(self) -> dict:
        """All registered backends by name (qsattn_fast.registry.backends)."""
        return _registry.backends()


_sys.modules[__name__].__class__ = _CallablePackage
