"""A single-node Apache Kafka broker in KRaft mode (broker + controller) on loopback."""

from __future__ import annotations

import uuid
from pathlib import Path

from kafkaml.settings import Settings
from kml.dev import tools
from kml.dev.procs import Proc, StackError, port_answers, require_free

LOG4J = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.org.name = org.apache.kafka
logger.org.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class KafkaBroker:
    name = "kafka"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = Path(settings.state_dir) / "kafka"
        self.proc = Proc("kafka", self.home)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.settings.kafka_port}"

    def _properties(self) -> str:
        s = self.settings
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},"
                f"CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={(self.home / 'data').resolve()}",
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=3",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "message.max.bytes=16777216",
                "",
            ]
        )

    def _format_once(self, java: str, libs: Path, config: Path) -> None:
        if (self.home / "data" / "meta.properties").exists():
            return
        cluster_file = self.home / "cluster.id"
        if not cluster_file.exists():
            cluster_file.write_text(_cluster_id())
        tools._run(
            [
                java,
                "-cp",
                f"{libs}/*",
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cluster_file.read_text().strip()}",
                "-c",
                str(config),
                "--ignore-formatted",
            ],
            "formatting the Kafka storage",
            120,
        )

    def start(self, timeout: float = 90.0) -> None:
        if self.proc.pid() is not None:
            return
        java = tools.check_java()
        libs = tools.kafka_libs(Path(self.settings.cache_dir))
        require_free(self.settings.kafka_port, "kafka_port", "the Kafka broker")
        require_free(
            self.settings.kafka_controller_port, "kafka_controller_port", "the Kafka controller"
        )
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "server.properties"
        config.write_text(self._properties())
        (self.home / "log4j2.properties").write_text(LOG4J)
        self._format_once(java, libs, config)
        self.proc.start(
            [
                java,
                "-Xms256m",
                "-Xmx1g",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={(self.home / 'log4j2.properties').resolve()}",
                "-cp",
                f"{libs}/*",
                "kafka.Kafka",
                str(config),
            ],
        )
        self.proc.wait_until(
            lambda: port_answers(self.settings.kafka_port),
            f"the Kafka broker to listen on {self.address}",
            timeout,
        )
        self.proc.wait_until(
            self.healthy, f"the Kafka broker at {self.address} to answer metadata", timeout
        )

    def healthy(self) -> bool:
        if not port_answers(self.settings.kafka_port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({"bootstrap.servers": self.address}).list_topics(timeout=3)
        except Exception:
            return False
        return bool(md.brokers)

    def stop(self) -> bool:
        return self.proc.stop(timeout=30)


def _cluster_id() -> str:
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


__all__ = ["KafkaBroker", "StackError"]
