"""The train function: Kafka-ML control message -> exact offset ranges -> Keras fit -> artifacts."""
