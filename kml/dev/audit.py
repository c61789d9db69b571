"""Audit the lock file for known vulnerabilities: ``make audit``; exit 1 on any finding.

First choice is ``pip-audit`` against the OSV advisory database (every pinned version is
checked). Where that database cannot be reached (machines that reach only the package index)
``pip-audit`` cannot audit at all: its index-backed service asks for per-version records, which
such an index does not serve, and it then skips every package. The fallback asks the index's
JSON API for each project, whose ``vulnerabilities`` are those of the project's LATEST release:
a pin at the latest release is audited; an older pin cannot be, and is listed as not audited
(the pins are kept current, so the list is short and says which). ``--ignore-vuln ID`` skips one
advisory in both paths; each ignored id is documented in the README with why it does not apply.

``python -m kml.dev.audit requirements.lock [--ignore-vuln ID ...]``
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


@dataclass
class Report:
    """What an audit found: advisories by package, and pins it could not audit."""

    findings: list[str] = field(default_factory=list)
    not_audited: list[str] = field(default_factory=list)
    source: str = ""

    def print(self) -> None:
        print(f"audit source: {self.source}")
        for line in self.not_audited:
            print(f"NOT AUDITED  {line}")
        for line in self.findings:
            print(f"VULNERABLE   {line}")
        print(f"{len(self.findings)} known vulnerabilities, {len(self.not_audited)} not audited")


def read_pins(lock: Path) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of a pip-compile lock file."""
    pins = {}
    for line in lock.read_text().splitlines():
        if m := _PIN.match(line.strip()):
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def run_pip_audit(lock: Path, ignore: list[str]) -> Report | None:
    """``pip-audit`` over the lock file with OSV; None when it gave no result (no service)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        argv = [sys.executable, "-m", "pip_audit", "-r", str(lock), "--require-hashes"]
        argv += ["--disable-pip", "-s", "osv", "-f", "json", "-o", str(out)]
        argv += ["--progress-spinner", "off"] + [a for i in ignore for a in ("--ignore-vuln", i)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if not out.exists() or not out.read_text().strip():
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"pip-audit gave no result (OSV advisory service out of reach?): {reason[:300]}")
            return None
        return from_pip_audit(json.loads(out.read_text()))


def from_pip_audit(result: dict[str, Any]) -> Report:
    report = Report(source="pip-audit, OSV advisory database")
    for dep in result.get("dependencies", []):
        if dep.get("skip_reason"):
            report.not_audited.append(f"{dep['name']}=={dep.get('version')}: {dep['skip_reason']}")
        for vuln in dep.get("vulns", []):
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed release"
            report.findings.append(f"{dep['name']}=={dep['version']}: {vuln['id']} ({fixed})")
    return report


def from_index(pins: dict[str, str], fetch, ignore: list[str]) -> Report:
    """Audit pins against the index's per-project advisories (those of the latest release)."""
    report = Report(source="package index JSON API (advisories of each project's latest release)")
    with ThreadPoolExecutor(8) as pool:
        projects = dict(zip(pins, pool.map(fetch, pins), strict=True))
    for name, version in sorted(pins.items()):
        project = projects[name]
        if project is None:
            report.not_audited.append(f"{name}=={version}: no record on the index")
            continue
        latest = project["info"]["version"]
        if latest != version:
            why = _held_back(project["info"].get("requires_python"))
            report.not_audited.append(
                f"{name}=={version}: the index lists advisories of {latest} only{why}"
            )
            continue
        for vuln in project.get("vulnerabilities") or []:
            ids = {vuln["id"], *(vuln.get("aliases") or [])}
            if vuln.get("withdrawn") or ids & set(ignore):
                continue
            fixed = ", ".join(vuln.get("fixed_in") or []) or "no fixed release"
            report.findings.append(f"{name}=={version}: {vuln['id']} ({fixed})")
    return report


def _held_back(requires_python: str | None) -> str:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    here = ".".join(map(str, sys.version_info[:3]))
    try:
        if requires_python and here not in SpecifierSet(requires_python):
            return f" (which needs Python {requires_python})"
    except InvalidSpecifier:
        pass
    return " (pinned below the latest release: a pin or another package's bound)"


def fetch_project(name: str) -> dict[str, Any] | None:
    """The index's JSON record of one project (its base URL is pip's own default index)."""
    from pip._internal.models.index import PyPI  # the index pip installs from, as pip names it

    for attempt in range(3):
        try:
            with urllib.request.urlopen(f"{PyPI.pypi_url}/{name}/json", timeout=60) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            if attempt == 2 or e.code < 500:
                raise
        except (urllib.error.URLError, TimeoutError):
            if attempt == 2:
                raise
        time.sleep(2**attempt)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kml.dev.audit", description=__doc__)
    parser.add_argument("lock", type=Path)
    parser.add_argument("--ignore-vuln", action="append", default=[], metavar="ID")
    args = parser.parse_args(argv)
    report = run_pip_audit(args.lock, args.ignore_vuln)
    if report is None:
        print("falling back to the package index's own advisories")
        report = from_index(read_pins(args.lock), fetch_project, args.ignore_vuln)
    report.print()
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
