//! `monitoring-setup`: puts BookedBarber's monitoring bundle
//! (bookedbarber-exporter, its alerts, Grafana dashboards and
//! ServiceMonitors) into a namespace of a cluster that runs the Prometheus
//! Operator, by driving `kubectl` (docs/deploy.md says why kubectl).
#![forbid(unsafe_code)]

mod bundle;
mod cluster;
mod kubectl;
mod manifest;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use bookedbarber_exporter::cli::parse_duration;
use clap::Parser;

use bundle::{Bundle, DEFAULT_PROMETHEUS_NAMESPACE};
use kubectl::Kubectl;

const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(
    name = "monitoring-setup",
    version,
    about = "Installs BookedBarber's monitoring bundle (bookedbarber-exporter, alerts, Grafana dashboards, \
             ServiceMonitors) into a Kubernetes namespace.",
    long_about = "Installs BookedBarber's monitoring bundle (bookedbarber-exporter, alerts, Grafana dashboards, \
ServiceMonitors) into NAMESPACE, where BookedBarber runs, in a cluster that runs the Prometheus Operator \
(kube-prometheus-stack).\n\n\
Steps: render the overlay's monitoring bundle for NAMESPACE with `kubectl kustomize`; check that the cluster \
answers, that it serves the Prometheus Operator's kinds, that NAMESPACE and the exporter's Secret exist; apply \
with server-side apply (field manager monitoring-setup); wait for the exporter to become ready; print what to \
open next. --dry-run prints the rendered YAML and touches nothing.\n\n\
The bundle is read from --bundle-dir; without it, from the first directory holding k8s/overlays among the \
executable's directory and its parents (a checkout's target/debug or target/release), \
<prefix>/share/bookedbarber-monitoring beside an installed <prefix>/bin/monitoring-setup, and the current \
directory and its parents.",
    after_help = "Example: monitoring-setup bookedbarber\n         \
                  monitoring-setup --overlay staging --context staging-cluster bookedbarber-staging\n         \
                  monitoring-setup --dry-run bookedbarber > bundle.yaml"
)]
struct Cli {
    /// Namespace to install into: the one BookedBarber runs in.
    namespace: String,

    /// Overlay whose monitoring bundle to install (a folder of k8s/overlays).
    #[arg(long, default_value = "production")]
    overlay: String,

    /// Print the rendered YAML on stdout and touch nothing.
    #[arg(long)]
    dry_run: bool,

    /// Kubeconfig context to use (default: the current context).
    #[arg(long)]
    context: Option<String>,

    /// Bundle directory (holding k8s/, config/, alerts/, dashboards/,
    /// servicemonitors/). Default: searched as described above.
    #[arg(long, env = "MONITORING_SETUP_BUNDLE_DIR")]
    bundle_dir: Option<PathBuf>,

    /// Namespace of the Prometheus that scrapes the bundle, for its
    /// NetworkPolicy [default: as in the overlay, kube-prometheus-stack's monitoring].
    #[arg(long)]
    prometheus_namespace: Option<String>,

    /// kubectl to run.
    #[arg(long, env = "KUBECTL", default_value = "kubectl")]
    kubectl: PathBuf,

    /// How long to wait for the exporter to become ready.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("monitoring-setup: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Progress goes to stderr, so that stdout holds only the YAML of --dry-run.
fn step(text: &str) {
    eprintln!("==> {text}");
}

fn detail(text: &str) {
    eprintln!("    {text}");
}

fn run(cli: &Cli) -> Result<()> {
    let kubectl = Kubectl::new(cli.kubectl.as_os_str(), cli.context.clone());
    let exe = std::env::current_exe().context("cannot find monitoring-setup's own path")?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let bundle = Bundle::locate(cli.bundle_dir.as_deref(), &exe, &cwd)?;

    step(&format!(
        "Rendering the {} monitoring bundle for namespace {} from {}",
        cli.overlay,
        cli.namespace,
        bundle.root().display()
    ));
    let yaml = bundle.render(
        &kubectl,
        &cli.overlay,
        &cli.namespace,
        cli.prometheus_namespace.as_deref(),
    )?;
    let objects = manifest::objects(&yaml);
    anyhow::ensure!(
        !objects.is_empty(),
        "the rendered bundle holds no object: is {} complete?",
        bundle.root().display()
    );
    detail(&format!(
        "{} objects: {}",
        objects.len(),
        manifest::summary(&objects)
    ));

    if cli.dry_run {
        let mut out = std::io::stdout().lock();
        out.write_all(yaml.as_bytes())
            .and_then(|()| out.flush())
            .context("cannot write the rendered bundle to stdout")?;
        step("Dry run: nothing was sent to the cluster");
        return Ok(());
    }

    step("Checking the cluster");
    let version = cluster::server_version(&kubectl, cli.context.as_deref())?;
    detail(&format!(
        "API server answers{}: Kubernetes {version}",
        cli.context
            .as_deref()
            .map(|c| format!(" (context {c})"))
            .unwrap_or_default()
    ));
    let needed = manifest::kinds_by_group_version(&objects);
    cluster::check_apis(&kubectl, &needed)?;
    detail(&format!(
        "serves every kind the bundle uses ({})",
        needed.keys().cloned().collect::<Vec<_>>().join(", ")
    ));
    if cluster::check_namespace(&kubectl, &cli.namespace)? {
        detail(&format!("namespace {} exists", cli.namespace));
    } else {
        detail(&format!(
            "not allowed to read namespace {}: going on",
            cli.namespace
        ));
    }
    if cluster::check_secret(&kubectl, &cli.namespace)? {
        detail(&format!(
            "Secret {} (PostgreSQL and Redis URLs) exists",
            cluster::EXPORTER_SECRET
        ));
    } else {
        detail(&format!(
            "not allowed to read Secret {}: going on",
            cluster::EXPORTER_SECRET
        ));
    }

    step(&format!(
        "Applying {} objects (server-side apply, field manager {})",
        objects.len(),
        cluster::FIELD_MANAGER
    ));
    for line in cluster::apply(&kubectl, &yaml)? {
        detail(&line);
    }

    step(&format!(
        "Waiting for {} to become ready (up to {:?})",
        cluster::EXPORTER,
        cli.timeout
    ));
    cluster::wait_for_exporter(&kubectl, &cli.namespace, cli.timeout, POLL, detail)?;

    print_next_steps(cli);
    Ok(())
}

fn print_next_steps(cli: &Cli) {
    let ns = &cli.namespace;
    let prom = cli
        .prometheus_namespace
        .as_deref()
        .unwrap_or(DEFAULT_PROMETHEUS_NAMESPACE);
    let context = cli
        .context
        .as_deref()
        .map(|c| format!(" --context {c}"))
        .unwrap_or_default();
    println!(
        "\
BookedBarber's monitoring runs in namespace {ns}. Next:

  Grafana: the dashboards are in the folder \"BookedBarber\" (the sidecar loads them within a minute;
  they land in General unless the chart sets grafana.sidecar.dashboards.folderAnnotation=grafana_folder).
    kubectl{context} -n {prom} port-forward svc/kube-prometheus-stack-grafana 3000:80
    open http://localhost:3000/dashboards?query=BookedBarber

  Prometheus: the targets bookedbarber-exporter, backend and frontend should be UP, and the rules loaded.
    kubectl{context} -n {prom} port-forward svc/kube-prometheus-stack-prometheus 9090
    open http://localhost:9090/targets?search=bookedbarber and http://localhost:9090/alerts?search=BookedBarber

  A test alert, to see it reach your receivers through Alertmanager:
    kubectl{context} -n {prom} port-forward svc/kube-prometheus-stack-alertmanager 9093
    amtool --alertmanager.url=http://localhost:9093 alert add BookedBarberTestAlert \\
        severity=warning namespace={ns} --annotation=summary='Test alert from monitoring-setup'
    (it resolves by itself after 5 minutes; amtool comes with Alertmanager or prometheus-alertmanager)"
    );
}
