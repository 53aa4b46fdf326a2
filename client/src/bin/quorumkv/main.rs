//! `quorumkv`, the command-line client.
//!
//! Modules: [`args`] defines the command line; [`commands`] runs the single-key and cluster
//! commands; [`import`] and [`verify`] run one request per record of a file, sharing
//! [`bulk`] for concurrency, progress and failure counts and [`records`] for file formats;
//! [`output`] formats what is printed; [`exit`] names the exit codes; [`bench`] (feature
//! `bench`) is the load generator.
//!
//! Every command is the same three steps: parse the arguments, call the library, print.

mod args;
#[cfg(feature = "bench")]
mod bench;
mod bulk;
mod commands;
mod exit;
#[cfg(test)]
mod fake_node;
mod import;
mod output;
mod records;
mod verify;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use quorumkv_client::{Client, ClientConfig};
use tracing_subscriber::EnvFilter;

use crate::args::{Cli, Command, GlobalArgs};

/// The environment variable holding the log filter (`debug`, `quorumkv_client=trace`, ...).
const LOG_ENV: &str = "QUORUMKV_LOG";

/// Warnings only by default: the command's output is what a person asked for.
const DEFAULT_LOG_FILTER: &str = "warn";

/// Long enough for a node across a busy network, short enough that a dead address is
/// skipped quickly (a refused connection returns at once anyway).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();

    let code = match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            output::complain(&format!("{error:#}"));
            exit::code_for(&error)
        }
    };
    ExitCode::from(code)
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let client = Client::new(client_config(&cli.global))?;
    match &cli.command {
        Command::Get(args) => commands::get(&client, args).await,
        Command::Put(args) => commands::put(&client, args).await,
        Command::Delete(args) => commands::delete(&client, args).await,
        Command::Status => commands::status(&client, &cli.global).await,
        Command::Ring { key } => commands::ring(&client, key.as_deref()).await,
        Command::Import(args) => import::run(&client, args).await,
        Command::Verify(args) => verify::run(&client, args).await,
        Command::Inspect { key, node } => commands::inspect(&client, &cli.global, key, node).await,
        Command::Compact { node } => commands::compact(&client, &cli.global, node).await,
        #[cfg(feature = "bench")]
        Command::Bench(args) => bench::run(&cli.global, args).await,
    }
}

pub fn client_config(global: &GlobalArgs) -> ClientConfig {
    let request_timeout = Duration::from_millis(global.timeout_ms);
    let mut config = ClientConfig::new(&global.nodes);
    config.cluster = global.cluster.clone();
    config.request_timeout = request_timeout;
    // A connect that outlasts the whole request's budget would only hide the timeout.
    config.connect_timeout = CONNECT_TIMEOUT.min(request_timeout);
    config
}

/// Logs go to standard error, so they never mix with values printed on standard output.
fn init_logging() {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|error| {
        if std::env::var_os(LOG_ENV).is_some() {
            output::complain(&format!("ignoring {LOG_ENV}: {error}"));
        }
        EnvFilter::new(DEFAULT_LOG_FILTER)
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
