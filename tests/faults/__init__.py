"""Fault tests: real processes killed, databases and object stores taken away mid-work."""
