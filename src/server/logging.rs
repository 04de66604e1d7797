//! A `log` backend for stderr that the systemd journal reads well: under
//! systemd (JOURNAL_STREAM set) each line starts with the sd-daemon priority
//! prefix (`<3>` error ... `<7>` debug) and carries no timestamp, since the
//! journal adds its own; at a terminal it prints a UTC timestamp and a level.
//! Twenty lines of code did not justify another dependency.

use std::io::Write;

struct Logger {
    level: log::LevelFilter,
    journal: bool,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut stderr = std::io::stderr().lock();
        let _ = if self.journal {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(stderr, "<{priority}>{}", record.args())
        } else {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let secs = now.as_secs();
            writeln!(
                stderr,
                "{:02}:{:02}:{:02}.{:03} {:5} {}",
                (secs / 3600) % 24,
                (secs / 60) % 60,
                secs % 60,
                now.subsec_millis(),
                record.level(),
                record.args()
            )
        };
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger once; later calls are ignored.
pub fn init(level: log::LevelFilter) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    if log::set_boxed_logger(Box::new(Logger { level, journal })).is_ok() {
        log::set_max_level(level);
    }
}
