//! Project automation, run as `cargo xtask <command>` (the alias in `.cargo/config.toml` builds
//! this crate in release mode). Today: `cargo xtask bench store`, the embedded store's benchmark,
//! `cargo xtask bench http`, the server's end-to-end benchmark over HTTP, and `cargo xtask bench
//! compare`, Dray against peer job queues (with `bench driver`, Dray's side of it).
//!
//! A plain harness that prints figures, not criterion: criterion takes longer to compile here than
//! the benchmark takes to run, and these workloads measure seconds of steady state, not
//! nanoseconds. This crate never ships in the server binary.

mod args;
mod bench_driver;
mod bench_http;
mod bench_limits;
mod bench_store;
mod compare;
mod counting_fs;
mod flags;
mod http_args;
mod http_load;
mod http_server;
mod machine;
mod workloads;

use anyhow::{Context, bail};

const HELP: &str = "\
cargo xtask <command>

Commands:
  bench store [WORKLOAD...] [FLAGS]   benchmark the embedded store in-process
  bench http [WORKLOAD...] [FLAGS]    benchmark `dray serve` end to end over HTTP
  bench limits [FLAGS]                flow limiters' cost on the lease, and fairness across groups
  bench compare [FLAGS]               Dray against BullMQ, graphile-worker and pg-boss
  bench driver [FLAGS]                Dray's driver for `bench compare` (one measured run)
  help                                this text

Run `cargo xtask bench <command> --help` for workloads and flags.
";

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    match argv.as_slice() {
        [] | ["help" | "--help" | "-h", ..] => {
            print!("{HELP}");
            Ok(())
        }
        ["bench", "store", rest @ ..] => {
            if rest.iter().any(|a| matches!(*a, "--help" | "-h")) {
                print!("{}", args::BENCH_STORE_HELP);
                return Ok(());
            }
            let opts = args::Options::parse(rest).context("bad arguments (see `cargo xtask bench store --help`)")?;
            bench_store::run(&opts)
        }
        ["bench", "http", rest @ ..] => {
            if rest.iter().any(|a| matches!(*a, "--help" | "-h")) {
                print!("{}", http_args::BENCH_HTTP_HELP);
                return Ok(());
            }
            let opts =
                http_args::HttpOptions::parse(rest).context("bad arguments (see `cargo xtask bench http --help`)")?;
            bench_http::run(&opts)
        }
        ["bench", "limits", rest @ ..] => {
            if rest.iter().any(|a| matches!(*a, "--help" | "-h")) {
                print!("{}", bench_limits::BENCH_LIMITS_HELP);
                return Ok(());
            }
            let opts = bench_limits::LimitsOptions::parse(rest)
                .context("bad arguments (see `cargo xtask bench limits --help`)")?;
            bench_limits::run(&opts)
        }
        ["bench", "compare", rest @ ..] => {
            if rest.iter().any(|a| matches!(*a, "--help" | "-h")) {
                print!("{}", compare::args::BENCH_COMPARE_HELP);
                return Ok(());
            }
            let opts = compare::args::CompareOptions::parse(rest)
                .context("bad arguments (see `cargo xtask bench compare --help`)")?;
            compare::run(&opts)
        }
        ["bench", "driver", rest @ ..] => {
            if rest.iter().any(|a| matches!(*a, "--help" | "-h")) {
                print!("{}", bench_driver::BENCH_DRIVER_HELP);
                return Ok(());
            }
            let opts =
                bench_driver::DriverOptions::parse(rest).context("bad arguments (see `xtask bench driver --help`)")?;
            bench_driver::run(&opts)
        }
        // Hidden: one measured workload in a fresh process, started by `bench store` itself so
        // that every run begins with an empty heap and its memory figures are its own.
        [args::CHILD, workload, rest @ ..] => {
            let opts = args::Options::parse(rest)?;
            workloads::child(workload, &opts)
        }
        [other, ..] => bail!("unknown command `{other}`\n\n{HELP}"),
    }
}
