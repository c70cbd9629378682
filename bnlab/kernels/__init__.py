"""BatchNorm as Triton kernels: a parallel, numerically stable forward and the closed-form
backward, for CUDA tensors (and CPU tensors in Triton's interpreter, TRITON_INTERPRET=1).

* ``batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
  momentum=0.1, eps=1e-5)``: torch.nn.functional.batch_norm's signature and semantics,
  differentiable (``BatchNormFunction``, whose backward runs the backward kernels).
* ``triton_kernels``: the kernels themselves; ``batchnorm``: their launchers.

Importing this package imports triton; ``bnlab.torch`` imports it only when a call runs on
the kernels (``bnlab.torch.functional.batch_norm(..., backend="triton")``, or "auto" on CUDA).
"""

from .batchnorm import SUPPORTED_DTYPES, BatchNormFunction, batch_norm, interpreter_active

__all__ = ["batch_norm", "BatchNormFunction", "SUPPORTED_DTYPES", "interpreter_active"]
