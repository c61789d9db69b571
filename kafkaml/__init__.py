"""Kafka-ML on Knative: the core library shared by the functions and the client side."""

__version__ = "0.1.0"
