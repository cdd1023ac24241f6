"""Synthetic RxRx1 in the exact Kaggle layout, with a learnable morphological signal.

Two modules: `cells.py`, the cell-image model (morphology per siRNA, batch effects, rendering, texture features,
PNG encoding), and `writer.py`, the data-set writer (`synthesize`: plate layout, images, CSVs, zips, the
classifier check). See docs/rxrx1.md.
"""
from __future__ import annotations

from .cells import MORPHOLOGY, BatchEffects, class_morphology, encode_png, render_synthetic_site, texture_features
from .writer import AUTO_CHECK_MIN_SITES, LAYOUTS, rxrx1_experiments, rxrx1_wells, synthesize

__all__ = ["synthesize", "AUTO_CHECK_MIN_SITES", "LAYOUTS", "rxrx1_experiments", "rxrx1_wells", "MORPHOLOGY",
           "BatchEffects", "class_morphology", "render_synthetic_site", "texture_features", "encode_png"]
