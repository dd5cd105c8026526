"""Robustness evaluation: `evaluate(...) -> RobustnessReport`.

- `run`: `evaluate`, the evaluation loop (clean accuracy, attacks per threat model and eps,
  cascade, detector metrics per attack, a stochastic pipeline scored over N draws).
- `report`: `RobustnessReport` and its `AttackResult` rows, the worst case per threat model.
- `chunks`: attacks run in chunks of images, kept after each, so that a killed evaluation resumes inside one.
- `sanity`: checks 1-5 against gradient masking and weak attacks, whose attacks (1-4) join the worst case;
  `binarization`: check 5, the binarization test.

The numbers computed from scores and verdicts (ROC-AUC, worst case, tolerance, detector metrics)
live in `tfpurify.metrics`.
"""

from tfpurify.evaluation.report import AttackResult, RobustnessReport
from tfpurify.evaluation.run import (JUDGE_DRAWS, THREAT_MODELS, AttackSpec, draw_hits, evaluate, make_attack_specs,
                                     scored_judge)

__all__ = ["THREAT_MODELS", "AttackSpec", "AttackResult", "RobustnessReport", "make_attack_specs", "evaluate",
           "scored_judge", "JUDGE_DRAWS", "draw_hits"]
