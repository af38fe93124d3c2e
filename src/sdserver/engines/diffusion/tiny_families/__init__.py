"""Tiny seeded models of every supported family (SD 1.5, SD 2.x v-prediction, SDXL and its refiner, SD3, Flux,
LCM) in the real layouts, written as diffusers folders or original-layout single files. Their outputs are noise.

`writer.make_tiny_family_model` writes one; `recipes` builds the pipelines from `components`; `original_layout`
renames weights to the single-file layouts; `names` lists the recipes without importing torch (so this package's
import stays torch-free too).
"""
