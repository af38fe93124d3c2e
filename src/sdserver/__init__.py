"""sdserver: a self-hosted, drop-in compatible server for the Stable Diffusion API image endpoints."""

__version__ = "0.1.0"
