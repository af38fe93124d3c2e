"""Stable Diffusion engine on diffusers. `models` and `schedulers_table` are torch-free (the API imports them)."""
