"""kdloss: exact knowledge-distillation losses on CPUs.

``loss = T^2 * KL(softmax(teacher / T) || softmax(student / T))``, computed by a Cython/OpenMP
kernel over the last axis of NumPy arrays. See README.md for semantics and accuracy.
"""

# First: the compiled kernel loads the OpenMP runtime, which reads its wait policy only then.
from ._threads import import_kernel

import_kernel()

from . import reference  # noqa: E402
from ._api import distillation_loss, kd_loss, log_softmax, softmax  # noqa: E402
from ._config import openmp_enabled, show_config  # noqa: E402
from ._sparse import sparse_kd_loss, sparse_kd_loss_and_grad  # noqa: E402
from ._training import hinton_loss, hinton_loss_and_grad, kd_loss_and_grad  # noqa: E402
from ._version import __version__  # noqa: E402

__all__ = [
    "__version__",
    "distillation_loss",
    "hinton_loss",
    "hinton_loss_and_grad",
    "kd_loss",
    "kd_loss_and_grad",
    "log_softmax",
    "openmp_enabled",
    "reference",
    "show_config",
    "softmax",
    "sparse_kd_loss",
    "sparse_kd_loss_and_grad",
]
