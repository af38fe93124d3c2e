"""ControlNet hint names: which `controlnet_type`s `auto_hint` can make a hint for, and how many ControlNets one job
may combine; torch- and numpy-free, so the API validates requests against the table the engine uses."""

from __future__ import annotations

from typing import Final

# ControlNets one job may combine (MultiControlNet); the engine keeps as many loaded.
MAX_CONTROLNETS: Final = 2

# What `auto_hint` can make, by `controlnet_type`. Other types (depth, openpose, ...) need a ready `control_image`.
# The engine's preprocessor table (engines/diffusion/hints.py) has exactly these keys (checked when it loads).
HINT_TYPES: Final = frozenset({"canny", "ip2p", "tile"})
