"""Analyses of a trained HCL model: norms vs. #objects, out-of-context scores, embeddings.

Command line: ``hcl-analyze {norms,out-of-context,embed,linear,knn,export} ...`` (see
:mod:`hcl_lightning.analysis.cli`); the same functions are importable:

>>> model = load_model("last.ckpt")
>>> images = read_coco("data/images", "data/annotations.json")
>>> norms_vs_objects(model, images, "out/norms")["spearman_rho"]
"""

from hcl_lightning.analysis.embed import (
    AnnotatedImage,
    embed_crops,
    embed_dataset,
    load_model,
    read_coco,
    read_folder,
)
from hcl_lightning.analysis.norms import norms_vs_objects
from hcl_lightning.analysis.out_of_context import auroc, out_of_context_scores

__all__ = [
    "AnnotatedImage",
    "auroc",
    "embed_crops",
    "embed_dataset",
    "load_model",
    "norms_vs_objects",
    "out_of_context_scores",
    "read_coco",
    "read_folder",
]
