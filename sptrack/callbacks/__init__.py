"""Lightning callbacks for self-supervised pretraining: EMA teachers, online evaluation, exact resume."""

from sptrack.callbacks.base import EvalCallback
from sptrack.callbacks.ema import EMATeacher, EMAUpdate, cosine_momentum
from sptrack.callbacks.exact_resume import ExactResume
from sptrack.callbacks.knn import OnlineKNN, knn_predict
from sptrack.callbacks.probe import LinearProbe, OnlineProbe
from sptrack.callbacks.rankme import RankMe, rankme

__all__ = [
    "EMATeacher",
    "EMAUpdate",
    "EvalCallback",
    "ExactResume",
    "LinearProbe",
    "OnlineKNN",
    "OnlineProbe",
    "RankMe",
    "cosine_momentum",
    "knn_predict",
    "rankme",
]
