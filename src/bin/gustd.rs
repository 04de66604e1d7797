//! gustd: the gust server. See `gustd --help` and README.md.

use gust::server::config::{Config, Flags};
use gust::server::{logging, Server};

fn main() {
    let flags: Flags = argh::from_env();
    if flags.version {
        println!("gustd {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let config = match Config::from_flags(flags) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gustd: {e}");
            std::process::exit(2);
        }
    };
    logging::init(config.log_level);
    // Register the handlers before any thread starts, so every thread
    // inherits a mask in which SIGTERM/SIGINT reach the iterator below.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("gustd: cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };
    let server = match Server::start(config) {
        Ok(server) => server,
        Err(e) => {
            log::error!("{e}");
            eprintln!("gustd: {e}");
            std::process::exit(1);
        }
    };
    if let Some(signal) = signals.forever().next() {
        log::info!("signal {signal} received");
    }
    server.shutdown();
}
