//! `dray serve`: configuration, logging, start, and a graceful stop on SIGTERM or Ctrl-C.

use std::io::Write;

use anyhow::Context;

/// Runs the server until SIGTERM or SIGINT, then shuts it down gracefully.
pub async fn run(args: dray_server::ServeArgs) -> anyhow::Result<()> {
    let config = dray_server::Config::from_args(args)?;
    dray_server::init_logging(config.log_format());
    let running = match dray_server::start(config).await {
        Ok(running) => running,
        // SIGTERM/SIGINT while waiting for the database: a requested stop, exit 0.
        Err(e) if e.is::<dray_server::Interrupted>() => return Ok(()),
        Err(e) => return Err(e),
    };
    // Listen for SIGTERM before saying we listen: a signal right after the line is seen.
    let signals = dray_server::shutdown_signals()?;
    // One line on stdout, so a supervisor or a test that asked for port 0 learns the address.
    // Logs go to stderr.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "dray listening on {}", running.url()).context("writing to stdout")?;
    stdout.flush().context("writing to stdout")?;
    drop(stdout);
    running.wait_with(signals).await
}
