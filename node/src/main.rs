//! `quorumkv-node`: one database node on real sockets and disk.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use quorumkv_node::{run, NodeArgs, NodeConfig, TokioEnv};
use tokio::signal::unix::SignalKind;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = NodeArgs::parse();
    let filter = EnvFilter::try_from_env("QUORUMKV_LOG").unwrap_or_else(|_| "info".into());
    // Colour only on a terminal: cluster.sh sends logs to files.
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .init();

    let config = match NodeConfig::load(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("quorumkv-node: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("quorumkv-node: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        // SIGTERM (what cluster.sh stop and service managers send) and Ctrl-C both stop
        // the node; if the handler cannot be installed, the signal's default still does.
        match tokio::signal::unix::signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    match runtime.block_on(run(TokioEnv, config, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "node stopped");
            eprintln!("quorumkv-node: {error:#}");
            ExitCode::FAILURE
        }
    }
}
