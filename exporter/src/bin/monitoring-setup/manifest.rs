//! What the rendered bundle holds: the apiVersion, kind and name of each
//! object, read from `kubectl kustomize`'s output.
//!
//! That output is normalised (documents separated by `---`, top-level keys
//! at column 0, two-space indentation), so reading those few fields needs no
//! YAML parser: a top-level `apiVersion:`/`kind:` line, and the `name:` key
//! indented by two spaces under `metadata:`.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

impl Object {
    /// The API group and version (`monitoring.coreos.com`, `v1`); the core
    /// group is the empty string.
    pub fn group_version(&self) -> (&str, &str) {
        match self.api_version.rsplit_once('/') {
            Some((group, version)) => (group, version),
            None => ("", self.api_version.as_str()),
        }
    }
}

/// The objects of a multi-document YAML stream, in order. Documents
/// without apiVersion and kind (empty ones) are skipped.
pub fn objects(yaml: &str) -> Vec<Object> {
    let mut out = Vec::new();
    for doc in split_documents(yaml) {
        let mut api_version = None;
        let mut kind = None;
        let mut name = None;
        let mut in_metadata = false;
        for line in doc.lines() {
            if !line.starts_with(' ') && !line.is_empty() {
                in_metadata = line.trim_end() == "metadata:";
                if let Some(v) = line.strip_prefix("apiVersion:") {
                    api_version = Some(scalar(v));
                } else if let Some(v) = line.strip_prefix("kind:") {
                    kind = Some(scalar(v));
                }
            } else if in_metadata && name.is_none() {
                if let Some(v) = line.strip_prefix("  name:") {
                    name = Some(scalar(v));
                }
            }
        }
        if let (Some(api_version), Some(kind)) = (api_version, kind) {
            out.push(Object {
                api_version,
                kind,
                name: name.unwrap_or_default(),
            });
        }
    }
    out
}

/// "3 ConfigMap, 1 Deployment, …": the kinds of `objects`, counted.
pub fn summary(objects: &[Object]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for o in objects {
        *counts.entry(o.kind.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(kind, n)| format!("{n} {kind}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The kinds needed from each API group/version other than the core one:
/// what the cluster's discovery must list before anything is applied.
pub fn kinds_by_group_version(objects: &[Object]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in objects {
        let (group, _) = o.group_version();
        if group.is_empty() {
            continue;
        }
        let kinds = out.entry(o.api_version.clone()).or_default();
        if !kinds.contains(&o.kind) {
            kinds.push(o.kind.clone());
        }
    }
    for kinds in out.values_mut() {
        kinds.sort();
    }
    out
}

fn split_documents(yaml: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in yaml.split_inclusive('\n') {
        if line.trim_end() == "---" {
            docs.push(&yaml[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&yaml[start..]);
    docs
}

/// A plain or quoted scalar on one line.
fn scalar(text: &str) -> String {
    let t = text.trim();
    let unquoted = t
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| t.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')));
    unquoted.unwrap_or(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENDERED: &str = "\
apiVersion: v1
data:
  business-queries.toml: |
    name: not-this-one
    kind: nor-this
kind: ConfigMap
metadata:
  labels:
    app.kubernetes.io/name: bookedbarber-exporter
    name: label-not-name
  name: bookedbarber-exporter-queries-5c2h8
  namespace: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  annotations:
    note: |
      name: inside a block
  name: \"bookedbarber-exporter\"
spec:
  template:
    metadata:
      name: template-name
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: bookedbarber-exporter
---
apiVersion: monitoring.coreos.com/v1alpha1
kind: AlertmanagerConfig
metadata:
  name: bookedbarber
---
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: bookedbarber-exporter
";

    #[test]
    fn reads_kind_and_name_of_each_document() {
        let found = objects(RENDERED);
        let ids: Vec<(&str, &str, &str)> = found
            .iter()
            .map(|o| (o.api_version.as_str(), o.kind.as_str(), o.name.as_str()))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("v1", "ConfigMap", "bookedbarber-exporter-queries-5c2h8"),
                ("apps/v1", "Deployment", "bookedbarber-exporter"),
                (
                    "monitoring.coreos.com/v1",
                    "ServiceMonitor",
                    "bookedbarber-exporter"
                ),
                (
                    "monitoring.coreos.com/v1alpha1",
                    "AlertmanagerConfig",
                    "bookedbarber"
                ),
                (
                    "monitoring.coreos.com/v1",
                    "PrometheusRule",
                    "bookedbarber-exporter"
                ),
            ]
        );
    }

    #[test]
    fn empty_documents_are_skipped() {
        assert!(objects("").is_empty());
        assert!(objects("---\n---\n").is_empty());
        assert_eq!(
            objects("---\napiVersion: v1\nkind: Service\nmetadata:\n  name: a\n").len(),
            1
        );
    }

    #[test]
    fn group_versions_split_the_core_group_off() {
        let o = |api: &str| Object {
            api_version: api.into(),
            kind: "K".into(),
            name: "n".into(),
        };
        assert_eq!(o("v1").group_version(), ("", "v1"));
        assert_eq!(o("apps/v1").group_version(), ("apps", "v1"));
        assert_eq!(
            o("monitoring.coreos.com/v1alpha1").group_version(),
            ("monitoring.coreos.com", "v1alpha1")
        );
    }

    #[test]
    fn kinds_are_grouped_by_api_version_without_the_core_group() {
        let found = kinds_by_group_version(&objects(RENDERED));
        let expect: BTreeMap<String, Vec<String>> = [
            ("apps/v1", vec!["Deployment"]),
            (
                "monitoring.coreos.com/v1",
                vec!["PrometheusRule", "ServiceMonitor"],
            ),
            ("monitoring.coreos.com/v1alpha1", vec!["AlertmanagerConfig"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        assert_eq!(found, expect);
    }

    #[test]
    fn summary_counts_kinds() {
        assert_eq!(
            summary(&objects(RENDERED)),
            "1 AlertmanagerConfig, 1 ConfigMap, 1 Deployment, 1 PrometheusRule, 1 ServiceMonitor"
        );
    }
}
