//! The cluster side: prerequisites, server-side apply, and waiting for the
//! exporter's Deployment. Each step is one or a few kubectl calls; what the
//! answers mean is decided by the pure functions at the bottom.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use thiserror::Error;

use crate::kubectl::{Kubectl, KubectlError};

/// The field manager the applied fields are recorded under.
pub const FIELD_MANAGER: &str = "monitoring-setup";
/// The exporter's Deployment, and the Secret its credentials come from
/// (k8s/components/monitoring/deployment.yaml).
pub const EXPORTER: &str = "bookedbarber-exporter";
pub const EXPORTER_SECRET: &str = "bookedbarber-exporter";

const HELM_INSTALL: &str = "  \
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts
  helm install kube-prometheus-stack prometheus-community/kube-prometheus-stack \\
      --namespace monitoring --create-namespace \\
      --set grafana.sidecar.dashboards.folderAnnotation=grafana_folder \\
      --set grafana.sidecar.dashboards.provider.foldersFromFilesStructure=true";

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error(transparent)]
    Kubectl(#[from] KubectlError),
    #[error(
        "cannot reach the Kubernetes API server{context}: {detail}\n\
         Check the kubeconfig (`kubectl config current-context`, --context NAME) and that the cluster is up."
    )]
    Unreachable { context: String, detail: String },
    #[error(
        "the Prometheus Operator's custom resources are not installed in this cluster \
         (missing: {missing}).\n\
         The monitoring bundle needs kube-prometheus-stack (Prometheus Operator, Prometheus, \
         Alertmanager, Grafana). Install it with Helm, keeping the release name \
         kube-prometheus-stack (the bundle's ServiceMonitors and rules carry \
         release: kube-prometheus-stack, which its Prometheus selects):\n{HELM_INSTALL}\n\
         then run monitoring-setup again."
    )]
    OperatorMissing { missing: String },
    #[error("the cluster does not serve {missing}, which the bundle uses (Kubernetes too old?)")]
    ApiMissing { missing: String },
    #[error(
        "namespace {namespace:?} does not exist. Deploy BookedBarber first \
         (kubectl apply -k k8s/overlays/production, docs/deploy.md) or create it \
         (kubectl create namespace {namespace})."
    )]
    NoNamespace { namespace: String },
    #[error(
        "the Secret {EXPORTER_SECRET:?} is missing in namespace {namespace:?}: the exporter reads \
         its PostgreSQL and Redis URLs from it. Create the read-only role \
         (k8s/components/monitoring/exporter-role.sql), then:\n  \
         kubectl -n {namespace} create secret generic {EXPORTER_SECRET} \
         --from-file=postgres-dsn=./postgres-dsn --from-file=redis-url=./redis-url\n\
         (docs/deploy.md, \"The exporter's Secret\")."
    )]
    NoSecret { namespace: String },
    #[error("unexpected answer from the API server for {what}: {detail}")]
    BadAnswer { what: String, detail: String },
    #[error(
        "{EXPORTER} did not become ready within {waited:?} ({state}).\n\
         Look at: kubectl -n {namespace} describe pods -l app.kubernetes.io/name={EXPORTER}\n\
         and:     kubectl -n {namespace} logs deployment/{EXPORTER}"
    )]
    NotReady {
        namespace: String,
        waited: Duration,
        state: String,
    },
    #[error(
        "{EXPORTER}'s rollout failed: {reason}.\n\
         Look at: kubectl -n {namespace} describe deployment/{EXPORTER}"
    )]
    RolloutFailed { namespace: String, reason: String },
}

/// The API server's version (`v1.32.4`), or why it cannot be reached.
pub fn server_version(kubectl: &Kubectl, context: Option<&str>) -> Result<String, ClusterError> {
    let answer = kubectl
        .cluster(&["get", "--raw", "/version", "--request-timeout=20s"], None)
        .map_err(|e| match e {
            KubectlError::Failed { stderr, .. } => ClusterError::Unreachable {
                context: context
                    .map(|c| format!(" (context {c:?})"))
                    .unwrap_or_default(),
                detail: stderr,
            },
            other => ClusterError::Kubectl(other),
        })?;
    let version: Value = parse_json("/version", &answer)?;
    Ok(version
        .get("gitVersion")
        .and_then(Value::as_str)
        .unwrap_or("unknown version")
        .to_string())
}

/// Fails unless discovery lists every kind the bundle uses.
pub fn check_apis(
    kubectl: &Kubectl,
    needed: &BTreeMap<String, Vec<String>>,
) -> Result<(), ClusterError> {
    let mut served = BTreeMap::new();
    for api_version in needed.keys() {
        let path = format!("/apis/{api_version}");
        let kinds = match kubectl.cluster(&["get", "--raw", path.as_str()], None) {
            Ok(answer) => served_kinds(&parse_json(&path, &answer)?),
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        served.insert(api_version.clone(), kinds);
    }
    let missing = missing_kinds(needed, &served);
    if missing.is_empty() {
        return Ok(());
    }
    let (operator, other): (Vec<_>, Vec<_>) = missing
        .into_iter()
        .partition(|(api, _)| api.starts_with("monitoring.coreos.com/"));
    if !operator.is_empty() {
        return Err(ClusterError::OperatorMissing {
            missing: describe(&operator),
        });
    }
    Err(ClusterError::ApiMissing {
        missing: describe(&other),
    })
}

/// Fails if the namespace is known not to exist; a namespace the user may
/// not read (RBAC) is left to the apply step.
pub fn check_namespace(kubectl: &Kubectl, namespace: &str) -> Result<bool, ClusterError> {
    match kubectl.cluster(&["get", "namespace", namespace, "-o", "name"], None) {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Err(ClusterError::NoNamespace {
            namespace: namespace.to_string(),
        }),
        Err(e) if e.is_forbidden() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Fails if the exporter's Secret is missing (the pod would never start).
pub fn check_secret(kubectl: &Kubectl, namespace: &str) -> Result<bool, ClusterError> {
    match kubectl.cluster(
        &[
            "get",
            "secret",
            EXPORTER_SECRET,
            "--namespace",
            namespace,
            "-o",
            "name",
        ],
        None,
    ) {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Err(ClusterError::NoSecret {
            namespace: namespace.to_string(),
        }),
        Err(e) if e.is_forbidden() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Server-side apply of the rendered bundle; kubectl's lines, one per object.
pub fn apply(kubectl: &Kubectl, yaml: &str) -> Result<Vec<String>, ClusterError> {
    let field_manager = format!("--field-manager={FIELD_MANAGER}");
    let out = kubectl.cluster(
        &[
            "apply",
            "--server-side",
            field_manager.as_str(),
            // monitoring-setup owns these objects: it takes over fields an
            // earlier `kubectl apply` or an edit left behind.
            "--force-conflicts",
            "-f",
            "-",
        ],
        Some(yaml.as_bytes()),
    )?;
    Ok(out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

/// Polls the exporter's Deployment until it is rolled out, calling
/// `progress` whenever its state changes.
pub fn wait_for_exporter(
    kubectl: &Kubectl,
    namespace: &str,
    timeout: Duration,
    poll: Duration,
    mut progress: impl FnMut(&str),
) -> Result<(), ClusterError> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let answer = kubectl.cluster(
            &[
                "get",
                "deployment",
                EXPORTER,
                "--namespace",
                namespace,
                "-o",
                "json",
            ],
            None,
        )?;
        let state = rollout_state(&parse_json("the exporter's Deployment", &answer)?);
        let text = state.to_string();
        if text != last {
            progress(&text);
            last = text;
        }
        match state {
            Rollout::Ready => return Ok(()),
            Rollout::Failed(reason) => {
                return Err(ClusterError::RolloutFailed {
                    namespace: namespace.to_string(),
                    reason,
                })
            }
            Rollout::Waiting(_) if start.elapsed() >= timeout => {
                return Err(ClusterError::NotReady {
                    namespace: namespace.to_string(),
                    waited: timeout,
                    state: last,
                })
            }
            Rollout::Waiting(_) => thread::sleep(poll),
        }
    }
}

fn parse_json(what: &str, text: &str) -> Result<Value, ClusterError> {
    serde_json::from_str(text).map_err(|e| ClusterError::BadAnswer {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

/// The kinds an APIResourceList serves (subresources such as
/// `deployments/status` are skipped).
pub fn served_kinds(resource_list: &Value) -> Vec<String> {
    resource_list
        .get("resources")
        .and_then(Value::as_array)
        .map(|resources| {
            resources
                .iter()
                .filter(|r| {
                    r.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| !n.contains('/'))
                })
                .filter_map(|r| r.get("kind").and_then(Value::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `needed` minus `served`, per API group/version.
pub fn missing_kinds(
    needed: &BTreeMap<String, Vec<String>>,
    served: &BTreeMap<String, Vec<String>>,
) -> Vec<(String, Vec<String>)> {
    needed
        .iter()
        .filter_map(|(api, kinds)| {
            let have = served.get(api).map(Vec::as_slice).unwrap_or_default();
            let absent: Vec<String> = kinds
                .iter()
                .filter(|k| !have.contains(k))
                .cloned()
                .collect();
            (!absent.is_empty()).then(|| (api.clone(), absent))
        })
        .collect()
}

fn describe(missing: &[(String, Vec<String>)]) -> String {
    missing
        .iter()
        .map(|(api, kinds)| format!("{api} {}", kinds.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    Ready,
    Waiting(String),
    Failed(String),
}

impl std::fmt::Display for Rollout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rollout::Ready => f.write_str("ready"),
            Rollout::Waiting(why) | Rollout::Failed(why) => f.write_str(why),
        }
    }
}

/// Whether a Deployment has rolled out, the way `kubectl rollout status`
/// decides it: the controller has seen the latest spec, every replica runs
/// the new template and is available, no old replica is left.
pub fn rollout_state(deployment: &Value) -> Rollout {
    let int = |path: &str| deployment.pointer(path).and_then(Value::as_i64);
    let generation = int("/metadata/generation").unwrap_or(0);
    let observed = int("/status/observedGeneration").unwrap_or(0);
    if observed < generation {
        return Rollout::Waiting("waiting for the Deployment controller".into());
    }
    let conditions = deployment
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(stuck) = conditions.iter().find(|c| {
        c.get("type").and_then(Value::as_str) == Some("Progressing")
            && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
    }) {
        let message = stuck
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("progress deadline exceeded");
        return Rollout::Failed(message.to_string());
    }
    let desired = int("/spec/replicas").unwrap_or(1);
    let updated = int("/status/updatedReplicas").unwrap_or(0);
    let total = int("/status/replicas").unwrap_or(0);
    let available = int("/status/availableReplicas").unwrap_or(0);
    let ready = int("/status/readyReplicas").unwrap_or(0);
    if updated < desired {
        return Rollout::Waiting(format!(
            "{updated} of {desired} pods updated, {ready} ready"
        ));
    }
    if total > updated {
        return Rollout::Waiting(format!(
            "{} old pods still terminating, {ready} of {desired} ready",
            total - updated
        ));
    }
    if available < updated {
        return Rollout::Waiting(format!(
            "{available} of {desired} pods available, {ready} ready"
        ));
    }
    Rollout::Ready
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(generation: i64, status: Value) -> Value {
        json!({"metadata": {"generation": generation}, "spec": {"replicas": 1}, "status": status})
    }

    #[test]
    fn a_new_deployment_waits_for_the_controller() {
        let d = json!({"metadata": {"generation": 1}, "spec": {"replicas": 1}});
        assert_eq!(
            rollout_state(&d),
            Rollout::Waiting("waiting for the Deployment controller".into())
        );
    }

    #[test]
    fn a_starting_pod_is_waited_for() {
        let d = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 0}),
        );
        assert_eq!(
            rollout_state(&d),
            Rollout::Waiting("0 of 1 pods available, 0 ready".into())
        );
    }

    #[test]
    fn an_old_pod_still_terminating_is_waited_for() {
        let d = deployment(
            3,
            json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 1,
                   "availableReplicas": 1, "readyReplicas": 1}),
        );
        assert_eq!(
            rollout_state(&d),
            Rollout::Waiting("1 old pods still terminating, 1 of 1 ready".into())
        );
    }

    #[test]
    fn an_updated_available_deployment_is_ready() {
        let d = deployment(
            3,
            json!({"observedGeneration": 3, "replicas": 1, "updatedReplicas": 1,
                   "availableReplicas": 1, "readyReplicas": 1}),
        );
        assert_eq!(rollout_state(&d), Rollout::Ready);
    }

    #[test]
    fn an_exceeded_progress_deadline_fails() {
        let d = deployment(
            1,
            json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                   "conditions": [{"type": "Progressing", "status": "False",
                                   "reason": "ProgressDeadlineExceeded",
                                   "message": "ReplicaSet \"x\" has timed out progressing."}]}),
        );
        assert_eq!(
            rollout_state(&d),
            Rollout::Failed("ReplicaSet \"x\" has timed out progressing.".into())
        );
    }

    #[test]
    fn served_kinds_skip_subresources() {
        let list = json!({"kind": "APIResourceList", "groupVersion": "monitoring.coreos.com/v1",
        "resources": [
            {"name": "servicemonitors", "kind": "ServiceMonitor"},
            {"name": "prometheuses", "kind": "Prometheus"},
            {"name": "prometheuses/status", "kind": "Prometheus"},
        ]});
        assert_eq!(served_kinds(&list), vec!["ServiceMonitor", "Prometheus"]);
        assert!(served_kinds(&json!({})).is_empty());
    }

    #[test]
    fn missing_kinds_are_listed_per_group_version() {
        let needed: BTreeMap<String, Vec<String>> = [
            ("apps/v1".to_string(), vec!["Deployment".to_string()]),
            (
                "monitoring.coreos.com/v1".to_string(),
                vec!["PrometheusRule".to_string(), "ServiceMonitor".to_string()],
            ),
        ]
        .into();
        let served: BTreeMap<String, Vec<String>> = [
            ("apps/v1".to_string(), vec!["Deployment".to_string()]),
            (
                "monitoring.coreos.com/v1".to_string(),
                vec!["ServiceMonitor".to_string()],
            ),
        ]
        .into();
        let missing = missing_kinds(&needed, &served);
        assert_eq!(
            missing,
            vec![(
                "monitoring.coreos.com/v1".to_string(),
                vec!["PrometheusRule".to_string()]
            )]
        );
        assert_eq!(
            describe(&missing),
            "monitoring.coreos.com/v1 PrometheusRule"
        );
        assert!(missing_kinds(&needed, &needed).is_empty());
    }

    #[test]
    fn the_operator_error_says_how_to_install_kube_prometheus_stack() {
        let text = ClusterError::OperatorMissing {
            missing: "monitoring.coreos.com/v1 ServiceMonitor".into(),
        }
        .to_string();
        assert!(text.contains(
            "helm install kube-prometheus-stack prometheus-community/kube-prometheus-stack"
        ));
        assert!(text.contains("monitoring.coreos.com/v1 ServiceMonitor"));
    }
}
