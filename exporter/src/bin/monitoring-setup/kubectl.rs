//! Running `kubectl`: every cluster call of monitoring-setup goes through
//! here, so that the context flag, the missing-binary error and the error
//! text are handled once.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use thiserror::Error;

/// A kubeconfig whose only cluster is 127.0.0.1 port 0, which no connection
/// can reach: what `kubectl kustomize` runs with.
pub const OFFLINE_KUBECONFIG: &str = "\
apiVersion: v1
kind: Config
clusters:
  - name: offline
    cluster:
      server: http://127.0.0.1:0
contexts:
  - name: offline
    context:
      cluster: offline
current-context: offline
";

#[derive(Debug, Error)]
pub enum KubectlError {
    #[error(
        "`{program}` not found: install kubectl 1.27 or newer \
         (https://kubernetes.io/docs/tasks/tools/), or name it with --kubectl PATH"
    )]
    Missing { program: String },
    #[error("cannot run `{program}`: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("`kubectl {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
}

impl KubectlError {
    /// The API server answered 404 (kubectl prints `Error from server (NotFound)`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, KubectlError::Failed { stderr, .. } if stderr.contains("(NotFound)"))
    }

    /// The API server refused the request for lack of permission.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, KubectlError::Failed { stderr, .. } if stderr.contains("(Forbidden)"))
    }
}

/// `kubectl`, with the kubeconfig context every cluster call uses.
#[derive(Debug, Clone)]
pub struct Kubectl {
    program: OsString,
    context: Option<String>,
}

impl Kubectl {
    pub fn new(program: impl Into<OsString>, context: Option<String>) -> Self {
        Kubectl {
            program: program.into(),
            context,
        }
    }

    /// `kubectl kustomize DIR`, kept off every cluster: some kubectl builds
    /// (Google Cloud SDK's version dispatcher) ask the API server for its
    /// version before any command, so the rendering runs with `kubeconfig`,
    /// which must point nowhere ([`OFFLINE_KUBECONFIG`]).
    pub fn kustomize(&self, dir: &Path, kubeconfig: &Path) -> Result<String, KubectlError> {
        let args: Vec<OsString> = vec!["kustomize".into(), dir.as_os_str().to_owned()];
        let out = self.run(&args, None, Some(kubeconfig))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A call to the cluster: `--context` first when one was chosen.
    pub fn cluster<S: AsRef<str>>(
        &self,
        args: &[S],
        stdin: Option<&[u8]>,
    ) -> Result<String, KubectlError> {
        let mut full: Vec<OsString> = Vec::new();
        if let Some(context) = &self.context {
            full.push("--context".into());
            full.push(context.into());
        }
        full.extend(args.iter().map(|a| OsString::from(a.as_ref())));
        let out = self.run(&full, stdin, None)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn run(
        &self,
        args: &[OsString],
        stdin: Option<&[u8]>,
        kubeconfig: Option<&Path>,
    ) -> Result<Output, KubectlError> {
        let program = self.program.to_string_lossy().into_owned();
        let mut cmd = Command::new(&self.program);
        if let Some(path) = kubeconfig {
            cmd.env("KUBECONFIG", path);
        }
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                KubectlError::Missing {
                    program: program.clone(),
                }
            } else {
                KubectlError::Spawn {
                    program: program.clone(),
                    source,
                }
            }
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // kubectl reads all of stdin before answering; a write error
            // shows up as kubectl's own failure below.
            let _ = pipe.write_all(input);
        }
        let out = child
            .wait_with_output()
            .map_err(|source| KubectlError::Spawn {
                program: program.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(KubectlError::Failed {
                args: args
                    .iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                stderr: tidy_stderr(&String::from_utf8_lossy(&out.stderr)),
            })
        }
    }
}

/// kubectl's error text without klog's `E1129 13:13:46.474026 20916 run.go:72]`
/// prefixes and blank lines, on one line per message.
pub fn tidy_stderr(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(|line| strip_klog_prefix(line).trim())
        .filter(|line| !line.is_empty())
        .collect();
    if lines.is_empty() {
        "(no error output)".to_string()
    } else {
        lines.join("\n  ")
    }
}

fn strip_klog_prefix(line: &str) -> &str {
    // klog: a severity letter, MMDD, a time, a thread id, file:line, "] ".
    let bytes = line.as_bytes();
    let looks_like_klog = bytes.len() > 6
        && matches!(bytes[0], b'I' | b'W' | b'E' | b'F')
        && bytes[1..5].iter().all(u8::is_ascii_digit)
        && bytes[5] == b' ';
    match (looks_like_klog, line.find("] ")) {
        (true, Some(end)) => &line[end + 2..],
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn klog_prefixes_are_removed() {
        let stderr = "E1129 13:13:46.474026   20916 memcache.go:265] couldn't get current server API group list: \
                      Get \"http://127.0.0.1:1/api\": dial tcp 127.0.0.1:1: connect: connection refused\n\n\
                      The connection to the server 127.0.0.1:1 was refused - did you specify the right host or port?\n";
        assert_eq!(
            tidy_stderr(stderr),
            "couldn't get current server API group list: Get \"http://127.0.0.1:1/api\": dial tcp \
             127.0.0.1:1: connect: connection refused\n  The connection to the server 127.0.0.1:1 \
             was refused - did you specify the right host or port?"
        );
    }

    #[test]
    fn ordinary_lines_are_kept() {
        assert_eq!(
            tidy_stderr("Error from server (NotFound): namespaces \"x\" not found\n"),
            "Error from server (NotFound): namespaces \"x\" not found"
        );
        assert_eq!(tidy_stderr("\n"), "(no error output)");
    }

    #[test]
    fn not_found_and_forbidden_are_recognised() {
        let failed = |stderr: &str| KubectlError::Failed {
            args: String::new(),
            stderr: stderr.to_string(),
        };
        assert!(failed(
            "Error from server (NotFound): the server could not find the requested resource"
        )
        .is_not_found());
        assert!(
            failed("Error from server (Forbidden): namespaces \"a\" is forbidden").is_forbidden()
        );
        assert!(!failed("connection refused").is_not_found());
        assert!(!KubectlError::Missing {
            program: "kubectl".into()
        }
        .is_not_found());
    }

    #[test]
    fn a_missing_program_is_reported_as_missing() {
        let kubectl = Kubectl::new("/nonexistent/kubectl-for-monitoring-setup-tests", None);
        let err = kubectl.cluster(&["version"], None).unwrap_err();
        assert!(matches!(err, KubectlError::Missing { .. }), "{err:?}");
        assert!(err.to_string().contains("install kubectl"), "{err}");
    }
}
