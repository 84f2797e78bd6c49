"""Scaling laws: fit L(N, D) to a sweep's points (approaches 2 and 3 of Hoffmann et al. 2022), bootstrap
intervals, and the compute-optimal model for a budget in FLOPs, hours or money.

    from lmlab.scaling import read_points, run_study, study_json
    study = run_study(read_points("logs/scaling/isoflop"))
    study.law.optimal(1e15)          # Allocation(flops, params, tokens, loss)
"""

from lmlab.scaling.analysis import Study, run_study, study_json
from lmlab.scaling.isoflop import IsoFlopFit, fit_isoflops
from lmlab.scaling.law import Allocation, ScalingLaw, bootstrap_law, fit_law
from lmlab.scaling.params import count_parameters
from lmlab.scaling.points import Points, read_points

__all__ = ["Allocation", "IsoFlopFit", "Points", "ScalingLaw", "Study", "bootstrap_law", "count_parameters",
           "fit_isoflops", "fit_law", "read_points", "run_study", "study_json"]
