"""The embedded local stack: a real Kafka broker and MinIO server on loopback, no Docker."""
