"""Run folders and where they live: a stage's context and manifest (folder), the run's copy in an
object store (mirror, storage), atomic writes and hashes (atomic), content ids of input files
(file_ids), the shared caches' files (cache_files) and each artifact's contract (artifacts)."""
