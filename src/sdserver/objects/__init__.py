"""The object store: where image and model bytes live (a local folder or S3), never the job store."""
