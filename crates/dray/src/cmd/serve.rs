//! `dray serve`: configuration, logging, start, and a graceful stop on SIGTERM or Ctrl-C.

use std::io::Write;

use anyhow::Context;

/// Runs the server until SIGTERM or SIGINT, then shuts it down gracefully.
pub async fn run(args: dray_server::ServeArgs) -> anyhow::Result<()> {
    let config = dray_server::Config::from_args(args)?;
    dray_server::init_logging(config.log_format());
    let running = dray_server::start(config).await?;
    // One line on stdout, so a supervisor or a test that asked for port 0 learns the address.
    // Logs go to stderr.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "dray listening on http://{}", running.addr).context("writing to stdout")?;
    stdout.flush().context("writing to stdout")?;
    drop(stdout);
    running.wait().await
}
