//! gust-bench, the load generator (the `bench` feature; no RocksDB).
//!
//! - [`cli`]: flags, one argh subcommand per scenario.
//! - [`scenarios`]: connect, idle, chat, sync: phases, figures, checks.
//! - [`engine`]: mio worker threads driving non-blocking connections
//!   through [`crate::protocol`].
//! - [`users`]: setup: accounts and session tokens, cached in a file.
//! - [`seqcheck`], [`payload`], [`source`], [`json`], [`report`],
//!   [`sysinfo`]: the pure parts and the output.
//!
//! The bench is a client only: it never touches the server's internals, so
//! what it measures is what a real client would see over TCP.
//!
//! ```text
//! gust-bench connect [--connections 10000]
//! gust-bench idle    [--connections 10000] [--seconds 30] [--server-pid PID]
//! gust-bench chat    [--connections 10000] [--seconds 20] [--size 100] [--window 8 | --rate R]
//! gust-bench sync    [--messages 100000] [--window 64]
//!   common: --target 127.0.0.1:7700 --threads 2 --source 127.0.0.2-254
//!           --connect-rate 0 --connect-inflight 1000 --users-file bench-users.txt
//!           --json-out bench-results.jsonl --server-flags "..." --smoke
//! ```
//!
//! `benches/run.sh [--smoke]` starts a gustd on a temporary directory and
//! runs the standard set. Exit status: 0 all checks passed, 1 a check
//! failed, 2 the run could not start.

pub mod cli;
pub mod engine;
// ok: test-only (cfg(test)); its unwraps fail a test, never touch wire input
#[cfg(test)]
mod fake;
pub mod json;
pub mod payload;
pub mod report;
pub mod scenarios;
pub mod seqcheck;
pub mod source;
pub mod sysinfo;
pub mod users;

use std::path::Path;

use cli::{Args, ScenarioArgs};

/// Exit status: every check passed.
pub const EXIT_OK: i32 = 0;
/// The run finished but something was wrong (lost, duplicated or reordered
/// messages, failed connections, server errors).
pub const EXIT_FAILED: i32 = 1;
/// The run could not start (bad flags, no server, setup failed).
pub const EXIT_ERROR: i32 = 2;

/// Runs one scenario: prints the table, appends the JSON record, and
/// returns the process exit status.
pub fn run(args: Args) -> i32 {
    // Start the shared clock before any thread reads it.
    payload::now_ns();
    let (scenario, json_out, result) = match &args.scenario {
        ScenarioArgs::Connect(a) => ("connect", a.json_out.clone(), scenarios::connect(a)),
        ScenarioArgs::Idle(a) => ("idle", a.json_out.clone(), scenarios::idle(a)),
        ScenarioArgs::Chat(a) => ("chat", a.json_out.clone(), scenarios::chat(a)),
        ScenarioArgs::Sync(a) => ("sync", a.json_out.clone(), scenarios::sync(a)),
    };
    let (report, status) = match result {
        Ok(report) => {
            let status = if report.ok() { EXIT_OK } else { EXIT_FAILED };
            (report, status)
        }
        Err(e) => {
            eprintln!("gust-bench {scenario}: {e}");
            let mut report =
                report::Report::new(scenario, "did not run".into(), String::new(), None);
            report.fail(e);
            (report, EXIT_ERROR)
        }
    };
    print!("{}", report.table());
    if let Err(e) = report.append_json(Path::new(&json_out)) {
        eprintln!("gust-bench: could not record the result: {e}");
        return status.max(EXIT_FAILED);
    }
    if status != EXIT_OK {
        eprintln!("gust-bench {scenario}: FAILED (see the problems above)");
    }
    status
}

/// `main` of the binary: parses the command line and runs.
pub fn main_from_env() -> i32 {
    let args: Args = argh::from_env();
    run(args)
}
