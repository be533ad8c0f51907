"""Fixtures of the Kubernetes manifest tests: every overlay rendered once
with the real `kubectl kustomize`, parsed, for all the tests to share."""
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from support.tools import ROOT, require, run

OVERLAYS = ("development", "staging", "production")
K8S = ROOT / "k8s"


@dataclass
class Rendered:
    overlay: str
    text: str
    docs: list

    def of_kind(self, *kinds):
        return [d for d in self.docs if d["kind"] in kinds]

    def get(self, kind, name):
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def workloads(self):
        """Deployments, StatefulSets and CronJobs."""
        return self.of_kind("Deployment", "StatefulSet", "CronJob")


def kustomize(path: Path) -> str:
    return run([require("kubectl"), "kustomize", path]).stdout


def parse(text: str) -> list:
    return [d for d in yaml.safe_load_all(text) if d]


def pod_spec(workload):
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def pod_labels(workload):
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return workload["spec"]["template"]["metadata"]["labels"]


@pytest.fixture(scope="session")
def rendered() -> dict:
    """{overlay: Rendered} for every overlay of k8s/overlays."""
    out = {}
    for overlay in OVERLAYS:
        text = kustomize(K8S / "overlays" / overlay)
        out[overlay] = Rendered(overlay, text, parse(text))
    return out


@pytest.fixture(scope="session")
def production(rendered) -> Rendered:
    return rendered["production"]


@pytest.fixture(scope="session")
def monitoring_setup_bin() -> Path:
    """monitoring-setup built from this checkout (scripts/test builds the bins)."""
    path = ROOT / "target/debug/monitoring-setup"
    if not path.is_file():
        pytest.fail(f"{path} not found: run `cargo build --bins` first (scripts/test does)", pytrace=False)
    return path
