"""What the rendered inference manifests carry for access: the tokens volume, the NetworkPolicy.

The base manifests (``knative/base``) hold the same for register, train and the dashboard.
"""

from __future__ import annotations

from typing import Any

from kafkaml.settings import Settings

TOKENS_SECRET = "kml-tokens"
TOKENS_MOUNT = "/etc/kml/tokens"
"""Where the Secret ``kml-tokens``' ``tokens.json`` is mounted (``KML_AUTH_TOKENS_FILE``)."""
KNATIVE_NAMESPACES = ("knative-serving", "kourier-system", "knative-eventing")
"""Who may connect to an inference pod: Knative Serving's activator and autoscaler, the
ingress gateway (Kourier's) and Knative Eventing's dispatchers."""


def tokens_volume() -> dict[str, Any]:
    return {
        "name": "tokens",
        "secret": {
            "secretName": TOKENS_SECRET,
            "items": [{"key": "tokens.json", "path": "tokens.json"}],
        },
    }


def network_policy(
    settings: Settings, name: str, labels: dict[str, str], stream: bool
) -> dict[str, Any]:
    """The NetworkPolicy of one deployment's pods: only Knative's namespaces may connect (the
    node's own probes always may). A stream pod takes no requests at all: it admits nobody."""
    if stream:
        selector, ingress = {"app.kubernetes.io/instance": name}, []
    else:
        selector = {"serving.knative.dev/service": name}
        ingress = [
            {
                "from": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
                    for ns in KNATIVE_NAMESPACES
                ]
            }
        ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
