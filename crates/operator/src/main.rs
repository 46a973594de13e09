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
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run {
        metrics_addr: "0.0.0.0:8080".into(),
    }) {
        Command::Crd { kind } => {
            match kind.as_str() {
                "etcdcluster" => print!("{}", crd_yaml()?),
                "etcdbackup" => print!("{}", backup_crd_yaml()?),
                other => anyhow::bail!("unknown CRD {other:?}: etcdcluster or etcdbackup"),
            }
            Ok(())
        }
        Command::Run { metrics_addr } => {
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
            controller::run(client, m).await;
            http.abort();
            Ok(())
        }
    }
}
