"""The HTTP API process: routes, request schemas, replies; torch-free, reaches workers only through the job store."""
