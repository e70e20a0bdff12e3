"""Pure-torch objectives: self-play square losses, divergence regularizers and presets.

Inputs are sequence-level log-probs (:class:`SampleBatch`), so the same code serves tabular
policies and language models. Convention: L_RSPO = L_SPPO + λ·R̂ with λ = ``coef`` = 2ητ.
See docs/objectives.md.
"""

from . import chi2 as _chi2  # noqa: F401  (registers "chi2")
from . import forward_kl as _forward_kl  # noqa: F401  (registers "forward_kl")
from . import reverse_kl as _reverse_kl  # noqa: F401  (registers "reverse_kl")
from .batch import SampleBatch
from .chi2 import Chi2
from .forward_kl import ForwardKL
from .inpo import inpo_loss
from .loss import LOSS_TYPES, RSPOLoss
from .mixture import Mixture
from .presets import PRESETS, Preset
from .registry import available_regularizers, register_regularizer, regularizer_class
from .regularizer import DEFAULT_LOG_CLIP, EstimatorInfo, Regularizer
from .reverse_kl import ReverseKL
from .spec import get_regularizer, parse_regularizer
from .sppo import sppo_hard_loss, sppo_loss, sppo_pair_loss

__all__ = [
    "DEFAULT_LOG_CLIP",
    "LOSS_TYPES",
    "PRESETS",
    "Chi2",
    "EstimatorInfo",
    "ForwardKL",
    "Mixture",
    "Preset",
    "RSPOLoss",
    "Regularizer",
    "ReverseKL",
    "SampleBatch",
    "available_regularizers",
    "get_regularizer",
    "inpo_loss",
    "parse_regularizer",
    "register_regularizer",
    "regularizer_class",
    "sppo_hard_loss",
    "sppo_loss",
    "sppo_pair_loss",
]
