"""`cellio show SOURCE ID_CODE -o site.png`: render one site (channel grid + official RGB composite)."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "render one site of a store or raw data set directory: its auto-contrasted channels + the RGB composite"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a cellio store (.zarr path or URL, e.g. s3://bucket/rxrx1.zarr) or a raw "
                                       "data set directory (e.g. RxRx1's)")
    parser.add_argument("id_code", help="well id, e.g. HUVEC-07_1_B03")
    parser.add_argument("--site", type=int, default=1, help="site within the well (RxRx1: 1 or 2)")
    parser.add_argument("--channels", default=None,
                        help="show only these channels, comma list of names (default: all of the layout's)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="PNG to write (default: ID_CODE_sSITE.png in the current directory)")


def run(args: argparse.Namespace) -> int:
    from ..render import load_site, render_site, save_png

    image, row, layout = load_site(args.source, args.id_code, args.site)
    if args.channels:  # LayoutError naming unknown channels and listing the layout's
        image = image[:, :, list(layout.channel_selection(args.channels))]
        layout = layout.select_channels(args.channels)
    p = layout.perturbations
    value = row.get(p.label_column)
    label = "unknown" if value is None or str(value) in ("<NA>", "nan") else str(value)
    title = (f"{args.id_code} site {args.site}  {row.get('dataset', '?')} {row.get(p.well_type_column, '?')}  "
             f"{p.label_column} {label}  {image.shape[0]}x{image.shape[1]}")
    out = save_png(render_site(image, layout, title=title), args.output or Path(f"{args.id_code}_s{args.site}.png"))
    print(f"wrote {out} ({title})")
    return 0
