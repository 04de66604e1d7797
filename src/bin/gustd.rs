//! gustd: the gust server. See `gustd --help` and README.md.

use gust::server::config::{Config, Flags};
use gust::server::{logging, Server};

/// jemalloc, not glibc's malloc: gustd allocates a message on one thread
/// (a shard decodes it) and frees it on another (the storage writer), and
/// glibc's free of another thread's chunk takes that arena's lock and
/// coalesces: malloc and free were 40 % of the storage writer's CPU.
/// With jemalloc the writer applies a batch 25 % faster (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation. Purging freed pages
/// after 1 s on a background thread keeps an idle server's RSS at what its
/// connections hold (the default 10 s decay, done only when something else
/// allocates, left an idle server holding the connect storm's garbage:
/// 862 B per idle connection instead of 484 B). An operator can still
/// override them with `_RJEM_MALLOC_CONF`.
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_OPTIONS: &u8 = &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

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
