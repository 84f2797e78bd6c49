"""Training losses in plain PyTorch, all computed in log-space."""

from lmlab.losses.contrastive import InfoNCELoss, info_nce
from lmlab.losses.distillation import kl_divergence
from lmlab.losses.language_modeling import LanguageModelingLoss, cross_entropy
from lmlab.losses.regression import mse
from lmlab.losses.retrieval import mean_reciprocal_rank, recall_at_k
from lmlab.losses.teacher import TeacherLoss

__all__ = ["cross_entropy", "mse", "kl_divergence", "info_nce", "LanguageModelingLoss", "TeacherLoss",
           "InfoNCELoss", "recall_at_k", "mean_reciprocal_rank"]
