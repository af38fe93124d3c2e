"""Worker processes: claim jobs from the job store, run them on an engine, write the images, complete the jobs."""
