"""``python -m kml.dev.bridge``: run the local KafkaSource bridge until SIGTERM."""

from kml.dev.bridge.runner import main

main()
