"""Evaluation metrics, faithful to the official implementations (pure functions, no model code).

* :mod:`~grainvl.metrics.vqa`: official VQA v2 answer normalisation and accuracy; VLUE exact match.
* :mod:`~grainvl.metrics.captioning`: BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D) through pycocoevalcap.
* :mod:`~grainvl.metrics.retrieval`: R@1/5/10 both ways, chunked and FAISS top-k for large galleries.
* :mod:`~grainvl.metrics.grounding`: inclusive-pixel IoU and accuracy at IoU >= 0.5.
* :mod:`~grainvl.metrics.classification`: accuracy and F1 (NLVR2, video QA).

One scale everywhere (the table in docs/metrics.md): accuracies, recalls and mIoU in percent
(0-100; VQA rounded to 2 decimals as ``vqaEval`` rounds), captioning scores as the fractions
pycocoevalcap returns. ``grainvl score`` applies them to official-format prediction files.
"""

from grainvl.metrics.captioning import CAPTION_METRICS, CaptionScorer, caption_scores, percent_points
from grainvl.metrics.classification import accuracy, f1_score, macro_f1
from grainvl.metrics.grounding import denormalize_cxcywh, grounding_accuracy, iou_xywh
from grainvl.metrics.retrieval import (
    FAISS_MIN_ITEMS,
    chunked_topk,
    embedding_retrieval_metrics,
    faiss_topk,
    retrieval_metrics,
    retrieval_metrics_from_candidates,
    retrieval_metrics_from_topk,
    topk_search,
)
from grainvl.metrics.vqa import exact_match_accuracy, normalize_answer, vqa_accuracy, vqa_evaluate

__all__ = [
    "CAPTION_METRICS",
    "FAISS_MIN_ITEMS",
    "CaptionScorer",
    "accuracy",
    "caption_scores",
    "chunked_topk",
    "denormalize_cxcywh",
    "embedding_retrieval_metrics",
    "exact_match_accuracy",
    "f1_score",
    "faiss_topk",
    "grounding_accuracy",
    "iou_xywh",
    "macro_f1",
    "normalize_answer",
    "percent_points",
    "retrieval_metrics",
    "retrieval_metrics_from_candidates",
    "retrieval_metrics_from_topk",
    "topk_search",
    "vqa_accuracy",
    "vqa_evaluate",
]
