"""The lock-file audit's decisions (no network): what counts as a finding, what is not audited."""

from __future__ import annotations

from kml.dev.audit import from_index, from_pip_audit, read_pins


def _project(version: str, *vulns: dict) -> dict:
    return {"info": {"version": version, "requires_python": ">=3.9"}, "vulnerabilities": vulns}


def test_read_pins_takes_every_pinned_line_of_a_hashed_lock(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "#    pip-compile ...\n"
        "keras==3.15.1 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n"
        "    # via kafka-ml-knative (pyproject.toml)\n"
        "ml_dtypes==0.7.0 ; python_version >= '3.11' \\\n    --hash=sha256:cc\n"
    )
    assert read_pins(lock) == {"keras": "3.15.1", "ml-dtypes": "0.7.0"}


def test_a_latest_pin_with_an_advisory_is_a_finding_unless_ignored_or_withdrawn():
    vuln = {"id": "GHSA-1", "aliases": ["CVE-2026-1"], "fixed_in": ["2.0"], "withdrawn": None}
    gone = {"id": "GHSA-2", "aliases": [], "fixed_in": [], "withdrawn": "2026-01-01"}
    projects = {"a": _project("1.0", vuln, gone), "b": _project("2.0"), "c": _project("9.0")}
    pins = {"a": "1.0", "b": "2.0", "c": "8.0"}
    report = from_index(pins, projects.get, ignore=[])
    assert report.findings == ["a==1.0: GHSA-1 (2.0)"]
    assert report.not_audited == [
        "c==8.0: the index lists advisories of 9.0 only (pinned below the latest release: a pin "
        "or another package's bound)"
    ]
    assert from_index(pins, projects.get, ignore=["CVE-2026-1"]).findings == []


def test_pip_audit_results_keep_findings_and_skips():
    report = from_pip_audit(
        {
            "dependencies": [
                {"name": "keras", "version": "3.12.0", "vulns": [{"id": "X", "fix_versions": []}]},
                {"name": "local", "skip_reason": "not on the index"},
            ]
        }
    )
    assert report.findings == ["keras==3.12.0: X (no fixed release)"]
    assert report.not_audited == ["local==None: not on the index"]
