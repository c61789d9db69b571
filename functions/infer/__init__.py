"""The infer function: one process serves one inference deployment (Kafka and HTTP paths)."""
