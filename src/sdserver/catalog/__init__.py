"""Model knowledge without torch: ids, files on disk, the registry, downloads, schedulers, hint names."""
