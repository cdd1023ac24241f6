"""JUMP Cell Painting (cpg0016, the Cell Painting Gallery): its facts and layouts (`layout.py`: `JUMP`,
`jump_layout`), the per-plate load_data CSVs (`load_data.py`), the consortium's metadata tables
(`consortium.py`), a site's pixels (`pixels.py`: TIFF, illumination correction, the intensity rule) and the
readers the ingest uses (`reader.py`: `jump_reader(src, ...)`, `READER`). See docs/datasets.md. Importing this
package is light: pandas, tifffile and fsspec load when first used."""
from __future__ import annotations

from .layout import BRIGHTFIELD, CHANNELS, FLUORESCENCE, JUMP, jump_layout
from .reader import READER, JumpSelection, jump_reader

__all__ = ["JUMP", "READER", "FLUORESCENCE", "BRIGHTFIELD", "CHANNELS", "JumpSelection", "jump_layout",
           "jump_reader"]
