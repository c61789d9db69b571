"""The Python kustomize subset: patches, namespace, labels, and loud failure on the rest."""

from __future__ import annotations

import pytest
import yaml

from kml.kustomize import KustomizeError, build


def write(root, kustomization, resources):
    root.mkdir(parents=True, exist_ok=True)
    (root / "r.yaml").write_text(yaml.safe_dump_all(resources))
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": ["r.yaml"], **kustomization})
    )
    return root


DEPLOY = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "d"},
    "spec": {
        "template": {
            "spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}
        }
    },
}
NS = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}


def test_namespace_labels_and_strategic_merge_by_container_name(tmp_path):
    root = write(
        tmp_path / "k",
        {
            "namespace": "ns",
            "labels": [{"pairs": {"team": "ml"}}],
            "patches": [
                {
                    "patch": yaml.safe_dump(
                        {
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "metadata": {"name": "d"},
                            "spec": {
                                "template": {
                                    "spec": {"containers": [{"name": "b", "image": "b:2"}]}
                                }
                            },
                        }
                    )
                }
            ],
        },
        [DEPLOY, NS],
    )
    deploy, ns = build(root)
    assert deploy["metadata"] == {"name": "d", "namespace": "ns", "labels": {"team": "ml"}}
    assert [c["image"] for c in deploy["spec"]["template"]["spec"]["containers"]] == ["a:1", "b:2"]
    assert "namespace" not in ns["metadata"]  # cluster-scoped


def test_json6902_patch_and_a_missing_target_fails(tmp_path):
    ops = "- op: replace\n  path: /spec/template/spec/containers/0/image\n  value: a:9\n"
    root = write(
        tmp_path / "k", {"patches": [{"target": {"kind": "Deployment"}, "patch": ops}]}, [DEPLOY]
    )
    assert build(root)[0]["spec"]["template"]["spec"]["containers"][0]["image"] == "a:9"
    bad = write(tmp_path / "k2", {"patches": [{"target": {"kind": "Job"}, "patch": ops}]}, [DEPLOY])
    with pytest.raises(KustomizeError, match="matches no resource"):
        build(bad)


def test_a_duplicate_resource_fails(tmp_path):
    with pytest.raises(KustomizeError, match="declared twice"):
        build(write(tmp_path / "k", {}, [DEPLOY, DEPLOY]))
