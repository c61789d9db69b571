"""S3-compatible object storage (MinIO) and the registry records kept in it."""
