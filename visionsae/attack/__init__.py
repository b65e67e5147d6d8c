"""Red-teaming a concept edit: attacks that try to make an erasing pipeline draw the erased
concept again, and the attack success rate (ASR) they reach.

* :mod:`.common` — the target (stock + erased pipeline + judge), the query budget, the ASR;
* :mod:`.text` — black-box prompt perturbations (nlpaug) with a beam search;
* :mod:`.whitebox` — discrete token optimisation through the erased pipeline's diffusion loss
  (UnlearnDiffAtk / P4D style, GCG-style token swaps);
* :mod:`.concept_vector` — Ring-A-Bell style: the concept's direction in the text encoder,
  then tokens whose embedding carries it, without the class word.

``visionsae attack`` (:mod:`visionsae.eval.attack`) runs them on the zoo.
"""

from .common import Budget, BudgetSpent, Judge, SeedResult, Target, attack_success_rate, judge_results, write_json

__all__ = ["Budget", "BudgetSpent", "Judge", "SeedResult", "Target", "attack_success_rate", "judge_results", "write_json"]
