//! The monitoring bundle on disk (`k8s/overlays/<overlay>/monitoring` and
//! the folders it includes) and its rendering for a namespace.
//!
//! Rendering goes through a throwaway kustomization that takes the overlay's
//! monitoring folder as its only resource and sets the namespace, so the
//! result is exactly what `kubectl kustomize` gives for the overlay, moved
//! to the namespace asked for.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

use crate::kubectl::{Kubectl, KubectlError, OFFLINE_KUBECONFIG};

/// The Prometheus namespace the bundle's NetworkPolicy admits by default.
pub const DEFAULT_PROMETHEUS_NAMESPACE: &str = "monitoring";
/// The NetworkPolicy that names Prometheus' namespace.
const PROMETHEUS_POLICY: &str = "bookedbarber-prometheus";

#[derive(Debug, Error)]
pub enum BundleError {
    #[error(
        "no bundle directory found (a directory holding k8s/overlays) above {searched}: \
         run monitoring-setup from a checkout of the bundle, or pass --bundle-dir DIR"
    )]
    NotFound { searched: String },
    #[error("{dir} is not a bundle directory: it has no k8s/overlays folder")]
    NotABundle { dir: String },
    #[error("unknown overlay {name:?}: {dir} has {available}")]
    UnknownOverlay {
        name: String,
        dir: String,
        available: String,
    },
    #[error(
        "invalid {what} {name:?}: a Kubernetes namespace name is at most 63 lower-case letters, \
         digits and '-', starting and ending with a letter or digit"
    )]
    InvalidNamespace { what: &'static str, name: String },
    #[error("cannot read the bundle or write the rendering's temporary kustomization")]
    Io(#[from] io::Error),
    #[error("rendering the bundle failed")]
    Render(#[source] KubectlError),
}

/// A bundle directory: the top of a checkout or installation, holding
/// `k8s/`, `config/`, `alerts/`, `dashboards/` and `servicemonitors/`.
#[derive(Debug, Clone)]
pub struct Bundle {
    root: PathBuf,
}

impl Bundle {
    /// `dir` if given, else the first bundle among [`candidates`].
    pub fn locate(dir: Option<&Path>, exe: &Path, cwd: &Path) -> Result<Bundle, BundleError> {
        if let Some(dir) = dir {
            return if is_bundle(dir) {
                Ok(Bundle {
                    root: dir.to_path_buf(),
                })
            } else {
                Err(BundleError::NotABundle {
                    dir: dir.display().to_string(),
                })
            };
        }
        let candidates = candidates(exe, cwd);
        candidates
            .iter()
            .find(|dir| is_bundle(dir))
            .map(|dir| Bundle { root: dir.clone() })
            .ok_or_else(|| BundleError::NotFound {
                searched: format!("{} and {}", exe.display(), cwd.display()),
            })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The overlay's monitoring folder, or the list of overlays that exist.
    pub fn overlay_dir(&self, overlay: &str) -> Result<PathBuf, BundleError> {
        let overlays = self.root.join("k8s/overlays");
        let dir = overlays.join(overlay).join("monitoring");
        if is_simple_name(overlay) && dir.join("kustomization.yaml").is_file() {
            return Ok(dir);
        }
        let mut available: Vec<String> = fs::read_dir(&overlays)?
            .filter_map(Result::ok)
            .filter(|e| e.path().join("monitoring/kustomization.yaml").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        available.sort();
        Err(BundleError::UnknownOverlay {
            name: overlay.to_string(),
            dir: overlays.display().to_string(),
            available: if available.is_empty() {
                "no overlay with a monitoring folder".to_string()
            } else {
                available.join(", ")
            },
        })
    }

    /// The overlay's monitoring bundle for `namespace`, as multi-document YAML.
    pub fn render(
        &self,
        kubectl: &Kubectl,
        overlay: &str,
        namespace: &str,
        prometheus_namespace: Option<&str>,
    ) -> Result<String, BundleError> {
        check_namespace_name("namespace", namespace)?;
        if let Some(ns) = prometheus_namespace {
            check_namespace_name("Prometheus namespace", ns)?;
        }
        let overlay_dir = self.overlay_dir(overlay)?.canonicalize()?;
        let work = tempfile::Builder::new()
            .prefix("monitoring-setup-")
            .tempdir()?;
        let work_dir = work.path().canonicalize()?;
        // Kustomize takes a resource directory outside the kustomization's
        // folder only by a relative path.
        let resource = relative_path(&work_dir, &overlay_dir);
        fs::write(
            work_dir.join("kustomization.yaml"),
            wrapper_kustomization(&resource, namespace, prometheus_namespace),
        )?;
        let kubeconfig = work_dir.join("offline-kubeconfig");
        fs::write(&kubeconfig, OFFLINE_KUBECONFIG)?;
        kubectl
            .kustomize(&work_dir, &kubeconfig)
            .map_err(BundleError::Render)
    }
}

fn is_bundle(dir: &Path) -> bool {
    dir.join("k8s/overlays").is_dir()
}

/// Where a bundle is looked for, in order: the executable's directory and
/// its parents (a checkout's target/debug, target/release), the
/// `share/bookedbarber-monitoring` directory beside an installed
/// executable's `bin/`, then the current directory and its parents.
pub fn candidates(exe: &Path, cwd: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    if let Some(exe_dir) = exe.parent() {
        out.extend(exe_dir.ancestors().map(Path::to_path_buf));
        if let Some(prefix) = exe_dir.parent() {
            out.push(prefix.join("share/bookedbarber-monitoring"));
        }
    }
    out.extend(cwd.ancestors().map(Path::to_path_buf));
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}

/// Namespace names are DNS-1123 labels.
pub fn check_namespace_name(what: &'static str, name: &str) -> Result<(), BundleError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(BundleError::InvalidNamespace {
            what,
            name: name.to_string(),
        })
    }
}

/// An overlay name is one path component (no `..`, no `/`).
fn is_simple_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    )
}

/// `to` relative to `from`; both absolute and canonical.
pub fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for part in &to[common..] {
        out.push(part.as_os_str());
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// The throwaway kustomization: the overlay's monitoring folder, moved to
/// `namespace`, with Prometheus' namespace changed when one is given.
/// Strings are written as JSON strings, which YAML reads as they are.
pub fn wrapper_kustomization(
    resource: &Path,
    namespace: &str,
    prometheus_namespace: Option<&str>,
) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let mut out = format!(
        "# Written by monitoring-setup: the bundle below, in namespace {namespace}.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\n\
         kind: Kustomization\n\
         namespace: {}\n\
         resources:\n  - {}\n",
        quote(namespace),
        quote(&resource.to_string_lossy()),
    );
    if let Some(ns) = prometheus_namespace {
        out.push_str(&format!(
            "patches:\n  \
             - target:\n      kind: NetworkPolicy\n      name: {PROMETHEUS_POLICY}\n    \
             patch: |-\n      \
             - op: replace\n        \
             path: /spec/ingress/0/from/0/namespaceSelector/matchLabels/kubernetes.io~1metadata.name\n        \
             value: {}\n",
            quote(ns)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_ancestor() {
        assert_eq!(
            relative_path(
                Path::new("/tmp/monitoring-setup-x"),
                Path::new("/work/repo/k8s/overlays/production/monitoring")
            ),
            PathBuf::from("../../work/repo/k8s/overlays/production/monitoring")
        );
        assert_eq!(
            relative_path(Path::new("/a/b"), Path::new("/a/b/c")),
            PathBuf::from("c")
        );
        assert_eq!(
            relative_path(Path::new("/a/b/c"), Path::new("/a/d")),
            PathBuf::from("../../d")
        );
        assert_eq!(
            relative_path(Path::new("/a"), Path::new("/a")),
            PathBuf::from(".")
        );
    }

    #[test]
    fn namespace_names_follow_dns_1123() {
        for ok in [
            "bookedbarber",
            "bookedbarber-dev",
            "a",
            "x1-2y",
            &"a".repeat(63),
        ] {
            assert!(check_namespace_name("namespace", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "BookedBarber",
            "-bb",
            "bb-",
            "b_b",
            "b.b",
            "../x",
            &"a".repeat(64),
        ] {
            let err = check_namespace_name("namespace", bad).unwrap_err();
            assert!(err.to_string().contains("invalid namespace"), "{err}");
        }
    }

    #[test]
    fn overlay_names_are_one_component() {
        assert!(is_simple_name("production"));
        for bad in ["", "..", "../production", "a/b", "/etc"] {
            assert!(!is_simple_name(bad), "{bad}");
        }
    }

    #[test]
    fn candidates_go_from_the_executable_up_then_from_the_working_directory_up() {
        let found = candidates(
            Path::new("/opt/bb/target/debug/monitoring-setup"),
            Path::new("/home/op/work"),
        );
        let expect: Vec<PathBuf> = [
            "/opt/bb/target/debug",
            "/opt/bb/target",
            "/opt/bb",
            "/opt",
            "/",
            "/opt/bb/target/share/bookedbarber-monitoring",
            "/home/op/work",
            "/home/op",
            "/home",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(found, expect);
    }

    #[test]
    fn an_installed_executable_finds_the_share_directory() {
        let found = candidates(Path::new("/usr/local/bin/monitoring-setup"), Path::new("/"));
        assert!(found.contains(&PathBuf::from("/usr/local/share/bookedbarber-monitoring")));
    }

    #[test]
    fn the_wrapper_sets_the_namespace_and_quotes_the_path() {
        let text = wrapper_kustomization(Path::new("../a b/monitoring"), "shop", None);
        assert!(text.contains("\nnamespace: \"shop\"\n"), "{text}");
        assert!(text.contains("\n  - \"../a b/monitoring\"\n"), "{text}");
        assert!(!text.contains("patches"), "{text}");
    }

    #[test]
    fn the_wrapper_patches_the_prometheus_namespace_only_when_asked() {
        let text = wrapper_kustomization(Path::new("m"), "shop", Some("observability"));
        assert!(text.contains("name: bookedbarber-prometheus"), "{text}");
        assert!(text.contains("value: \"observability\""), "{text}");
    }

    #[test]
    fn locate_reports_a_directory_without_overlays() {
        let dir = tempfile::tempdir().unwrap();
        let err = Bundle::locate(Some(dir.path()), Path::new("/x/y"), Path::new("/")).unwrap_err();
        assert!(matches!(err, BundleError::NotABundle { .. }), "{err}");
        fs::create_dir_all(dir.path().join("k8s/overlays/production/monitoring")).unwrap();
        let bundle = Bundle::locate(None, &dir.path().join("bin/tool"), Path::new("/")).unwrap();
        assert_eq!(bundle.root(), dir.path());
    }

    #[test]
    fn unknown_overlays_list_the_available_ones() {
        let dir = tempfile::tempdir().unwrap();
        for overlay in ["production", "staging"] {
            let m = dir
                .path()
                .join("k8s/overlays")
                .join(overlay)
                .join("monitoring");
            fs::create_dir_all(&m).unwrap();
            fs::write(m.join("kustomization.yaml"), "").unwrap();
        }
        fs::create_dir_all(dir.path().join("k8s/overlays/no-monitoring")).unwrap();
        let bundle = Bundle::locate(Some(dir.path()), Path::new("/x"), Path::new("/")).unwrap();
        assert!(bundle.overlay_dir("production").is_ok());
        let err = bundle.overlay_dir("prod").unwrap_err().to_string();
        assert!(err.contains("production, staging"), "{err}");
        assert!(bundle.overlay_dir("../k8s").is_err());
    }
}
