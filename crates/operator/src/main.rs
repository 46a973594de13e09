//! `ferrokv-operator`: `crd` prints the CustomResourceDefinition, `run` (default) runs the
//! controller with its metrics/health HTTP endpoint.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ferrokv_operator::{backup_crd_yaml, controller, crd_yaml, metrics};

#[derive(Parser)]
#[command(
    name = "ferrokv-operator",
    version,
    about = "Kubernetes operator for ferrokv (etcd-compatible) clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a CRD as YAML: `etcdcluster` (default) or `etcdbackup`.
    Crd {
        #[arg(default_value = "etcdcluster")]
        kind: String,
    },
    /// Run the controller.
    Run {
        /// Address of the `/metrics` and `/healthz` endpoint.
        #[arg(
            long,
            env = "FERROKV_OPERATOR_METRICS_ADDR",
            default_value = "0.0.0.0:8080"
        )]
        metrics_addr: String,
        /// Renew operator-issued certificates this long before they expire (`90s`, `10m`,
        /// `23h59m50s`, `7d`); default: at two thirds of their lifetime. Members reload
        /// renewed certificates without a restart.
        #[arg(long, env = "FERROKV_OPERATOR_CERT_RENEW_BEFORE", value_parser = parse_duration)]
        cert_renew_before: Option<std::time::Duration>,
        /// How long each step of a CA rotation (trust the new CA, certificates from it, drop
        /// the old CA) waits for the changed Secrets to reach every member.
        #[arg(
            long,
            env = "FERROKV_OPERATOR_CERT_ROTATION_WAIT",
            value_parser = parse_duration,
            default_value = "2m"
        )]
        cert_rotation_wait: std::time::Duration,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    ferrokv_operator::parse_duration(s)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run {
        metrics_addr: "0.0.0.0:8080".into(),
        cert_renew_before: None,
        cert_rotation_wait: ferrokv_operator::tls::Policy::default().rotation_wait,
    }) {
        Command::Crd { kind } => {
            match kind.as_str() {
                "etcdcluster" => print!("{}", crd_yaml()?),
                "etcdbackup" => print!("{}", backup_crd_yaml()?),
                other => anyhow::bail!("unknown CRD {other:?}: etcdcluster or etcdbackup"),
            }
            Ok(())
        }
        Command::Run {
            metrics_addr,
            cert_renew_before,
            cert_rotation_wait,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .json()
                .init();
            let client = kube::Client::try_default()
                .await
                .context("kubernetes client")?;
            let m = metrics::Metrics::default();
            let listener = tokio::net::TcpListener::bind(&metrics_addr)
                .await
                .with_context(|| format!("bind {metrics_addr}"))?;
            let server = axum::serve(listener, metrics::router(m.clone()));
            let http = tokio::spawn(async move { server.await });
            let policy = ferrokv_operator::tls::Policy {
                renew_before: cert_renew_before,
                rotation_wait: cert_rotation_wait,
            };
            controller::run(client, m, policy).await;
            http.abort();
            Ok(())
        }
    }
}
