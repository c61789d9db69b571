"""A single-node Apache Kafka broker in KRaft mode (broker + controller) on loopback.

With ``KML_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT`` in the settings its client
listener takes SCRAM users only: the settings' user (``KML_KAFKA_USERNAME``/``PASSWORD``) is
bootstrapped into the metadata when the storage is formatted (``kafka-storage format
--add-scram``), the broker talks to itself as that user, and a client without it is refused.
"""

from __future__ import annotations

import re
import secrets
import uuid
from pathlib import Path

from kafkaml.auth import write_private
from kafkaml.kafka import client_config
from kafkaml.settings import KafkaBootstrap, Settings
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

    @property
    def scram(self) -> bool:
        """Whether the client listener takes SCRAM users only (``SASL_PLAINTEXT``)."""
        protocol = self.settings.kafka_security_protocol.strip().upper()
        if protocol in ("SSL", "SASL_SSL"):
            raise StackError(
                f"the local broker has no TLS listener: KML_KAFKA_SECURITY_PROTOCOL={protocol} "
                "is for a Kafka of your own (SASL_PLAINTEXT gives the local one SCRAM users)"
            )
        return protocol == "SASL_PLAINTEXT"

    def _scram_user(self) -> tuple[str, str, str]:
        s = self.settings
        mechanism = s.kafka_sasl_mechanism.strip().upper()
        if mechanism not in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
            raise StackError(f"KML_KAFKA_SASL_MECHANISM={mechanism}: the local broker does SCRAM")
        for name, value in (
            ("KML_KAFKA_USERNAME", s.kafka_username),
            ("password", s.kafka_password),
        ):
            # they go into a JAAS line and kafka-storage's [name=...,password=...] argument
            if not re.fullmatch(r"[A-Za-z0-9_.~-]+", value or ""):
                raise StackError(f"{name}: required, letters, digits and _.~- only")
        return mechanism, s.kafka_username, s.kafka_password

    def _properties(self) -> str:
        s = self.settings
        client = "SASL_PLAINTEXT" if self.scram else "PLAINTEXT"
        sasl = []
        if self.scram:
            mechanism, user, password = self._scram_user()
            module = "org.apache.kafka.common.security.scram.ScramLoginModule"
            sasl = [
                f"sasl.enabled.mechanisms={mechanism}",
                f"sasl.mechanism.inter.broker.protocol={mechanism}",
                f"listener.name.sasl_plaintext.{mechanism.lower()}.sasl.jaas.config={module} "
                f'required username="{user}" password="{password}";',
            ]
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}",
                f"listeners={client}://127.0.0.1:{s.kafka_port},"
                f"CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
                f"advertised.listeners={client}://127.0.0.1:{s.kafka_port}",
                "controller.listener.names=CONTROLLER",
                f"listener.security.protocol.map={client}:{client},CONTROLLER:PLAINTEXT",
                f"inter.broker.listener.name={client}",
                *sasl,
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
        users = self.home / "scram-user"  # who was bootstrapped at format time
        if (self.home / "data" / "meta.properties").exists():
            had = users.read_text().strip() if users.is_file() else ""
            if self.scram and had != self._scram_user()[1]:
                raise StackError(
                    f"the Kafka storage in {self.home} was formatted without the SCRAM user "
                    f"{self.settings.kafka_username!r}: `kml dev down --purge` and start again"
                )
            return
        cluster_file = self.home / "cluster.id"
        if not cluster_file.exists():
            cluster_file.write_text(_cluster_id())
        scram = []
        if self.scram:
            mechanism, user, password = self._scram_user()
            scram = ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
            users.write_text(user + "\n")
        else:
            users.unlink(missing_ok=True)
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
                *scram,
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
        write_private(config, self._properties())  # it holds the SCRAM password
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
            admin = AdminClient(
                client_config(KafkaBootstrap(self.address, self.settings.kafka.security))
            )
            md = admin.list_topics(timeout=3)
        except Exception:
            return False
        return bool(md.brokers)

    def stop(self) -> bool:
        return self.proc.stop(timeout=30)


def scram_password_file(state_dir: str) -> Path:
    return Path(state_dir) / "kafka" / "scram.password"


def with_scram(settings: Settings) -> Settings:
    """``settings`` with the local broker's SCRAM user (``kml dev up --kafka-scram``): user
    ``KML_KAFKA_USERNAME`` (default ``kml``), password ``KML_KAFKA_PASSWORD`` or the one made at
    the first such start, kept in ``<state_dir>/kafka/scram.password`` (mode 600) for the CLI."""
    path = scram_password_file(settings.state_dir)
    password = settings.kafka_password or (path.read_text().strip() if path.is_file() else "")
    if not password:
        password = secrets.token_urlsafe(24)
    write_private(path, password + "\n")
    return settings.replace(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_username=settings.kafka_username or "kml",
        kafka_password=password,
    )


def with_local_scram(settings: Settings) -> Settings:
    """``settings`` with the password of a local broker started ``--kafka-scram`` when they use
    SASL_PLAINTEXT without one (the CLI's settings: the password is not in settings.json)."""
    path = scram_password_file(settings.state_dir)
    protocol = settings.kafka_security_protocol.strip().upper()
    if protocol != "SASL_PLAINTEXT" or settings.kafka_password or not path.is_file():
        return settings
    return settings.replace(kafka_password=path.read_text().strip())


def _cluster_id() -> str:
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


__all__ = ["KafkaBroker", "StackError"]
