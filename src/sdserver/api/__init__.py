"""The HTTP API process: FastAPI routes, request schemas, replies; torch-free, talks to workers only through the
job store."""
