"""The local KafkaSource bridge: Knative's KafkaSource dispatcher, played for the local stack.

``sources`` reads the KafkaSource manifests, ``consumer`` follows one source's topics and commits
offsets, ``events`` turns a record into the CloudEvent Knative would send, ``rendering`` writes
values (headers, times, JSON) the way the JVM dispatcher does, ``delivery`` sends the event with
the source's retry and dead-letter policy, ``runner`` ties them together in one process.
"""

from kml.dev.bridge.runner import Bridge, main, read_status

__all__ = ["Bridge", "main", "read_status"]
