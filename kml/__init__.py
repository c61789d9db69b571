"""The user's side of Kafka-ML on Knative: the ``kml`` CLI, its HTTP client, the demo, the local
stack (Kafka broker, MinIO, the KafkaSource bridge, local inference) and manifest checking."""
