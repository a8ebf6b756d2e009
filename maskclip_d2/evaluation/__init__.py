"""Evaluators of the paper's benchmarks, chosen from a dataset's ``evaluator_type``."""
from .build import build_evaluator
from .coco_ovd_evaluation import COCOOpenVocabularyEvaluator
from .panoptic_things_evaluation import PanopticThingsCOCOEvaluator
from .proposal_recall_evaluation import ProposalRecallEvaluator

__all__ = ["build_evaluator", "COCOOpenVocabularyEvaluator", "PanopticThingsCOCOEvaluator",
           "ProposalRecallEvaluator"]
