//! `ferrokv`: the member binary, a drop-in for the `etcd` command.
//!
//! Owns the command line (etcd-compatible flags and `ETCD_*` env vars), logging setup,
//! process signals and the admin subcommands (`version`, `dump-logs`,
//! `snapshot save|status|restore`). It holds no server logic: a member is
//! `ferrokv_server::Member`, and this crate must not depend on server internals; the admin
//! tools read files offline (WAL, snapshot) through the wal/storage crates, use the server's
//! public id/membership encoding for restore, or talk the public gRPC API.

mod check;
mod dump_logs;
mod error;
mod flags;
mod snapshot;
mod snapshot_format;
mod version;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use ferrokv_server::Member;
use tracing_subscriber::EnvFilter;

use crate::flags::{Command, LogFormat, LogSettings, Serve};

fn main() -> ExitCode {
    // Lossy rather than `env::args()`, which panics on a non-UTF-8 argument.
    let args = std::env::args_os().map(|a| a.to_string_lossy().into_owned());
    let command = match flags::parse(args, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let result = match command {
        Command::Help(text) => emit(&text),
        Command::Version => emit(&version::render()),
        Command::DumpLogs { data_dir } => dump_logs::run(&data_dir, &mut std::io::stdout().lock()),
        Command::Check { data_dir } => check::run(&data_dir, &mut std::io::stdout().lock()),
        Command::SnapshotStatus { file } => {
            snapshot::status(&file).and_then(|s| emit(&s.to_string()))
        }
        Command::SnapshotSave(save) => runtime().and_then(|rt| rt.block_on(snapshot::save(&save))),
        Command::SnapshotRestore(restore) => snapshot::restore(&restore).and_then(|r| {
            emit(&format!(
                "restored snapshot to {} (revision {}, member {:x}, cluster {:x})\n",
                restore.config.data_dir.display(),
                r.revision,
                r.member_id,
                r.cluster_id
            ))
        }),
        Command::Serve(serve) => {
            // Before anything starts: an unknown bootstrap variable stops the member here,
            // with the same one-line error as a bad flag.
            let names: Vec<String> = std::env::vars_os()
                .filter_map(|(k, _)| k.into_string().ok())
                .collect();
            if let Err(e) = flags::check_bootstrap_env(names.iter().map(String::as_str)) {
                return fail(&e);
            }
            return run_member(*serve);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Writes to stdout; `print!` would panic when stdout is closed (`ferrokv ... | head`).
pub fn emit(text: &str) -> error::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| error::Error::io("writing", "stdout", e))
}

/// One line on stderr and exit code 1: what etcd does for a bad flag, and what scripts expect.
fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    // Not `eprintln!`: it panics if stderr is gone, and there is nowhere left to report to.
    let _ = writeln!(std::io::stderr(), "ferrokv: {e}");
    ExitCode::from(1)
}

pub(crate) fn runtime() -> error::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| error::Error::io("starting", "the tokio runtime", e))
}

fn run_member(serve: Serve) -> ExitCode {
    init_logging(serve.log);
    let outcome = runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(serve_until_stopped(serve)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "member stopped with a fatal error"
            );
            ExitCode::from(1)
        }
    }
}

/// `--log-level` sets the level; `RUST_LOG`, when set, replaces it entirely so a developer can
/// turn on one module (`RUST_LOG=ferrokv_raftnode=trace`).
fn init_logging(log: LogSettings) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::new(spec),
        // The HTTP/2 stack logs every frame at debug; keep it out of `--log-level=debug`.
        _ => EnvFilter::new(format!(
            "{},h2=info,hyper=info,hyper_util=info,tower=info",
            log.level.as_filter()
        )),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Console => builder.try_init(),
    };
}

async fn serve_until_stopped(serve: Serve) -> anyhow::Result<()> {
    let cfg = serve.config;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        name = %cfg.name,
        data_dir = %cfg.data_dir.display(),
        initial_cluster_state = ?cfg.initial_cluster_state,
        "starting ferrokv member"
    );
    let env_names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    for name in flags::unknown_env_vars(env_names.iter().map(String::as_str)) {
        tracing::warn!(
            name,
            "unrecognized environment variable; no flag of that name"
        );
    }
    let mut signals = Signals::install().context("installing signal handlers")?;
    let member = Member::start(cfg).await.context("starting the member")?;
    tracing::info!(
        client_urls = member.client_urls().join(","),
        member_id = format!("{:x}", member.member_id()),
        cluster_id = format!("{:x}", member.cluster_id()),
        "ready to serve client requests"
    );
    let stop = member.shutdown_handle();
    let wait = member.wait();
    tokio::pin!(wait);
    tokio::select! {
        result = &mut wait => {
            // The member ended on its own: only a fatal error does that (fail-stop).
            result.context("member failed")?;
            Ok(())
        }
        signal = signals.next() => {
            tracing::info!(signal, "received signal; shutting down gracefully");
            stop.shutdown();
            tokio::select! {
                result = &mut wait => result.context("shutting down")?,
                // A second signal means the operator will not wait for a clean stop; the WAL
                // is the commit point, so exiting now loses nothing acknowledged.
                signal = signals.next() => {
                    anyhow::bail!("received {signal} again during shutdown; exiting immediately")
                }
            }
            tracing::info!("member stopped");
            Ok(())
        }
    }
}

/// SIGTERM (what Kubernetes and process supervisors send) and SIGINT (Ctrl-C).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
