"""Static checks with the real tools: checkov on every rendered overlay
(zero failed checks; each skip annotated on its object with a reason),
yamllint on the manifests, hadolint on the exporter's Dockerfile."""
import json

import pytest
import yaml

from support.tools import ROOT, require, run

from .conftest import OVERLAYS

# The only checks the manifests skip, each with its reason in a
# checkov.io/skipN annotation on the object.
ALLOWED_SKIPS = {
    # Release tags in the repository; digests pinned at release time.
    "CKV_K8S_43",
    # checkov 3.1 ignores a CronJob pod template's seccompProfile field.
    "CKV_K8S_31",
}


@pytest.fixture(scope="session")
def checkov_report(rendered, tmp_path_factory):
    """One checkov run over the three rendered overlays (it starts slowly,
    so one process scans them all), as {overlay: results}."""
    workdir = tmp_path_factory.mktemp("checkov")
    # The backup shell (k8s/tools) is checked beside production's policies.
    shell = yaml.safe_load((ROOT / "k8s/tools/backup-shell.yaml").read_text())
    shell["metadata"]["namespace"] = "bookedbarber"
    extra = {"production": "---\n" + yaml.safe_dump(shell)}
    for overlay, r in rendered.items():
        # checkov takes any file holding "{{" for a Helm template and skips
        # all of it: the dashboards' legends and the alerts' annotations
        # have them. Spaced out, they are plain text to it.
        (workdir / f"{overlay}.yaml").write_text((r.text + extra.get(overlay, "")).replace("{{", "{ {"))
    proc = run([require("checkov"), "--directory", workdir, "--framework", "kubernetes",
                "--output", "json", "--skip-download", "--soft-fail"])
    report = json.loads(proc.stdout)
    # An empty result (no "results") means checkov read nothing.
    assert "results" in report and report["summary"]["parsing_errors"] == 0, report
    # It counts a few resources more than the objects (containers of pod templates).
    assert report["summary"]["resource_count"] >= sum(len(r.docs) for r in rendered.values()), report["summary"]
    by_overlay = {o: {"passed": [], "failed": [], "skipped": []} for o in rendered}
    for kind in ("passed", "failed", "skipped"):
        for check in report["results"][f"{kind}_checks"]:
            by_overlay[check["file_path"].strip("/").removesuffix(".yaml")][kind].append(check)
    return by_overlay


def annotation_reasons(obj):
    """{check id: reason} from an object's checkov.io/skipN annotations."""
    out = {}
    for key, value in (obj["metadata"].get("annotations") or {}).items():
        if key.startswith("checkov.io/skip"):
            check, _, reason = value.partition("=")
            out[check] = reason.strip()
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_finds_nothing(checkov_report, rendered, overlay):
    results = checkov_report[overlay]
    checked = set()
    for c in results["passed"]:
        kind, _, name = c["resource"].split(".", 2)
        checked.add((kind, name))
    for obj in rendered[overlay].workloads() + rendered[overlay].of_kind("Ingress", "Service"):
        key = (obj["kind"], obj["metadata"]["name"])
        assert key in checked, f"{overlay}: checkov did not check {key}"
    failed = [f"{c['check_id']} {c['check_name']}: {c['resource']}" for c in results["failed"]]
    assert not failed, f"{overlay}:\n" + "\n".join(failed)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_checkov_skip_is_annotated_with_a_reason(checkov_report, rendered, overlay):
    for check in checkov_report[overlay]["skipped"]:
        kind, namespace, name = check["resource"].split(".", 2)
        if (kind, name) == ("Pod", "bookedbarber-backup-shell"):
            obj = yaml.safe_load((ROOT / "k8s/tools/backup-shell.yaml").read_text())
        else:
            obj = rendered[overlay].get(kind, name)
        reason = annotation_reasons(obj).get(check["check_id"], "")
        assert check["check_id"] in ALLOWED_SKIPS, f"{check['resource']}: unexpected skip {check['check_id']}"
        assert len(reason) > 30, f"{check['resource']}: skip of {check['check_id']} without a reason"


def test_yamllint_is_clean():
    files = sorted(ROOT.glob("k8s/**/*.yaml")) + [ROOT / "config/kustomization.yaml"]
    assert len(files) > 40
    proc = run([require("yamllint"), "--strict", "--format", "parsable",
                "--config-file", ROOT / "tests/k8s/yamllint.yaml", *files], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_is_clean():
    proc = run([require("hadolint"), "--failure-threshold", "info", ROOT / "exporter/Dockerfile"], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
