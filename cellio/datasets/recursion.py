"""Recursion's six-channel cell-painting protocol, shared by its public releases (RxRx1, RxRx2, RxRx3-core).

The stains are documented for RxRx19b (the same protocol assumed for the others, whose cards do not list them);
the tints and display windows are the official rxrx1-utils RGB composite (`rxrx.io.convert_tensor_to_rgb`), on
0..255. Files name the channels w1..w6.
"""
from __future__ import annotations

from .layout import Channel

__all__ = ["RECURSION_CHANNELS"]

RECURSION_CHANNELS: tuple[Channel, ...] = (
    Channel("Hoechst", "w1", (19, 0, 249), (0, 51)),
    Channel("ConA", "w2", (42, 255, 31), (0, 107)),
    Channel("Phalloidin", "w3", (255, 0, 25), (0, 64)),
    Channel("Syto14", "w4", (45, 255, 252), (0, 191)),
    Channel("MitoTracker", "w5", (250, 0, 253), (0, 89)),
    Channel("WGA", "w6", (254, 255, 40), (0, 191)),
)
