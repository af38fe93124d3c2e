"""Engines that run models in the worker processes (torch lives only here)."""
