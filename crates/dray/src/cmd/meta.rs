//! Commands about the tool and the server's liveness rather than jobs: `dray health` (a probe for
//! container health checks and scripts), `dray completions <shell>` and `dray man`, both generated
//! from the clap definition in `cli.rs`, so they never drift from the real flags.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, HealthArgs, ManArgs};
use crate::output;

/// `GET /healthz` within the timeout. Errors (unreachable, timeout, a non-2xx) are reported like
/// any other command's, with exit status 6 for an unreachable or unavailable server.
pub async fn health(
    server: &str,
    builder: dray_client::ClientBuilder,
    args: HealthArgs,
    json: bool,
) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let client = builder.connect_timeout(timeout).request_timeout(timeout).build()?;
    let health = client.health().await?;
    if json {
        return output::json(&health);
    }
    println!("{server}: {}", health.status);
    Ok(())
}

/// The completion script for `args.shell` on stdout.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut command = Cli::command();
    let mut stdout = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, "dray", &mut stdout);
    stdout.flush().context("writing to stdout")
}

/// `dray.1` on stdout, or every page into `args.dir`.
pub fn man(args: ManArgs) -> anyhow::Result<()> {
    let command = Cli::command();
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))?;
            println!("man pages written to {}", dir.display());
            Ok(())
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            clap_mangen::Man::new(command).render(&mut stdout).context("writing to stdout")?;
            stdout.flush().context("writing to stdout")
        }
    }
}
