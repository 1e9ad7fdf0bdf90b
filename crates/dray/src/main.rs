//! `dray`: the one binary. `dray serve` runs the server; every other command is a thin client of
//! its HTTP API (through `dray-client`), printing human tables or, with `--json`, one JSON
//! document, and exiting with a status scripts can rely on (see `exit`).
//!
//! This crate holds no business logic: what a command may do is decided by the server.

mod cli;
mod cmd;
mod exit;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::exit::Exit;

fn main() -> ExitCode {
    // Clap exits by itself: 2 on a usage error, 0 for --help and --version.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(Exit::Other as u8);
        }
    };
    let server = cli.server.clone();
    let json = cli.json;
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::from(Exit::Ok as u8),
        Err(err) => ExitCode::from(exit::report(&err, &server, json) as u8),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { server, json, token, ca_cert, command } = cli;
    if let Command::Serve(serve) = command {
        return cmd::serve::run(serve.args).await;
    }
    if let Command::Migrate(args) = command {
        return cmd::migrate::run(args, json).await;
    }
    match command {
        Command::Health(args) => {
            return cmd::meta::health(&server, client_builder(&server, None, &ca_cert)?, args, json).await;
        }
        Command::Completions(args) => return cmd::meta::completions(args),
        Command::Schedules(cli::SchedulesCommand::Preview(args)) => return cmd::schedules::preview(args, json),
        Command::Man(args) => return cmd::meta::man(args),
        _ => {}
    }
    let client = client_builder(&server, token, &ca_cert)?.build()?;
    match command {
        Command::Serve(_) | Command::Migrate(_) | Command::Health(_) | Command::Completions(_) | Command::Man(_) => {
            unreachable!("handled above")
        }
        Command::Enqueue(args) => cmd::enqueue::run(&client, args, json).await,
        Command::Jobs(command) => cmd::jobs::run(&client, command, json).await,
        Command::Dlq(command) => cmd::dlq::run(&client, command, json).await,
        Command::Queues(command) => cmd::queues::run(&client, command, json).await,
        Command::Work(args) => cmd::work::run(client, args, json).await,
        Command::Tokens(command) => cmd::tokens::run(&client, command, json).await,
        Command::Schedules(command) => cmd::schedules::run(&client, command, json).await,
        Command::Locks(command) => cmd::locks::run(&client, command, json).await,
    }
}

/// A client of `server` with the global options: the token, and a CA certificate to trust.
fn client_builder(
    server: &str,
    token: Option<String>,
    ca_cert: &Option<std::path::PathBuf>,
) -> anyhow::Result<dray_client::ClientBuilder> {
    use anyhow::Context;
    let mut builder = dray_client::Client::builder(server);
    if let Some(token) = token {
        builder = builder.token(token);
    }
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).with_context(|| format!("--ca-cert: cannot read {}", path.display()))?;
        builder = builder.ca_certificates_pem(pem);
    }
    Ok(builder)
}
