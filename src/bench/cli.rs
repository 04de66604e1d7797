//! The `gust-bench` command line: one argh subcommand per scenario.
//!
//! argh has no flattening, so the flags every scenario shares are written
//! once in the `scenario_args!` macro and stamped into each subcommand's
//! struct (field types are passed as bracketed tokens, because argh
//! recognises `Option<T>` by its spelling, which a `ty` fragment hides); that keeps `gust-bench <scenario> --help` complete and lets
//! flags follow the scenario name. Size flags are `Option`s so that
//! `--smoke` can lower the defaults while an explicit value still wins.

use argh::FromArgs;

/// gust-bench: the load generator for gustd. Scenarios: connect, idle, chat,
/// sync. Accounts are provisioned once (register + login) and cached in the
/// users file; measured phases only resume. Every scenario checks what the
/// server returned and exits non-zero if anything was lost, duplicated or
/// reordered. Results: a table on stdout, one JSON line appended to
/// --json-out.
#[derive(FromArgs, Debug)]
pub struct Args {
    #[argh(subcommand)]
    pub scenario: ScenarioArgs,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum ScenarioArgs {
    Connect(ConnectArgs),
    Idle(IdleArgs),
    Chat(ChatArgs),
    Sync(SyncArgs),
}

/// The flags all scenarios share, copied out of a subcommand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Common {
    pub target: String,
    pub threads: usize,
    pub source: Option<String>,
    pub connect_rate: u64,
    pub connect_inflight: usize,
    pub users_file: String,
    pub setup_threads: usize,
    pub json_out: String,
    pub server_pid: Option<u32>,
    pub server_flags: Option<String>,
    pub smoke: bool,
    pub psk_file: Option<String>,
    pub handshake_timeout_secs: u64,
    pub sched_normal: bool,
}

/// Half the cores, rounded up. On a box shared with gustd (which runs one
/// shard per two cores) more workers only contend with the server: on this
/// project's 2-core machine one worker measured a higher window-8 maximum
/// than two (282,000 against 248,000 msg/s) and lower latency at every
/// fixed rate (BENCHMARKS.md).
pub fn default_threads() -> usize {
    super::sysinfo::cores().div_ceil(2)
}

/// Every core. On loopback the connecting side pays for most of both ends'
/// handshake (the SYN, the server's socket clone and the final ACK run in
/// the connecting thread's softirq), so one worker, not gustd, set the
/// connect rate: 19,000-23,000/s against 25,000-27,000/s with two workers
/// at 10,000 connections, same minutes (BENCHMARKS.md).
pub fn all_cores() -> usize {
    super::sysinfo::cores()
}

/// Per-scenario defaults the shared flags fall back to.
pub trait ScenarioDefaults {
    fn default_threads() -> usize {
        default_threads()
    }
}

impl ScenarioDefaults for ConnectArgs {
    fn default_threads() -> usize {
        all_cores()
    }
}
impl ScenarioDefaults for IdleArgs {}
impl ScenarioDefaults for ChatArgs {}
impl ScenarioDefaults for SyncArgs {}

macro_rules! scenario_args {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident : [$($ty:tt)*],
            )*
        }
    ) => {
        #[derive(FromArgs, Debug, Clone, PartialEq, Eq)]
        $(#[$meta])*
        pub struct $name {
            /// server address, host:port (default 127.0.0.1:7700)
            #[argh(option, default = "String::from(\"127.0.0.1:7700\")")]
            pub target: String,

            /// worker threads, each with its own mio Poll and connections
            /// (default: every core for connect, whose loopback handshakes
            /// cost the connecting side both ends' kernel work; half the
            /// cores, rounded up, for the others, leaving the rest to a gustd
            /// on the same box; give more on a load box of its own)
            #[argh(option)]
            pub threads: Option<usize>,

            /// local addresses to connect from, round-robin: "127.0.0.2-127.0.0.250",
            /// "127.0.0.2-250", a comma list, or "none" (default for a loopback
            /// target: 127.0.0.2-127.0.0.254; otherwise none)
            #[argh(option)]
            pub source: Option<String>,

            /// connects started per second (default 0: unlimited, but at most
            /// --connect-inflight at a time)
            #[argh(option, default = "0")]
            pub connect_rate: u64,

            /// connections being set up at once, all threads together; keeps
            /// the server's listen backlog (4096) from overflowing (default 1000)
            #[argh(option, default = "1000")]
            pub connect_inflight: usize,

            /// cache of provisioned accounts and session tokens, reused by later
            /// runs (default bench-users.txt)
            #[argh(option, default = "String::from(\"bench-users.txt\")")]
            pub users_file: String,

            /// blocking client threads that register and log in missing accounts
            /// (default 16)
            #[argh(option, default = "16")]
            pub setup_threads: usize,

            /// file the JSON record of this run is appended to
            /// (default bench-results.jsonl)
            #[argh(option, default = "String::from(\"bench-results.jsonl\")")]
            pub json_out: String,

            /// pid of gustd, for its memory and CPU figures (default: the process
            /// listening on --target, found through /proc/net/tcp)
            #[argh(option)]
            pub server_pid: Option<u32>,

            /// the flags gustd was started with (free text, recorded in the JSON)
            #[argh(option)]
            pub server_flags: Option<String>,

            /// tiny sizes for CI: 50 connections, 2 seconds, 500 sync messages
            #[argh(switch)]
            pub smoke: bool,

            /// file with the server's 32-byte pre-shared key (raw or 64 hex
            /// digits): connections then use chacha20-poly1305
            #[argh(option)]
            pub psk_file: Option<String>,

            /// seconds a connection may take from connect to logged_in (default 30)
            #[argh(option, default = "30")]
            pub handshake_timeout_secs: u64,

            /// keep the worker threads under the default scheduling policy;
            /// by default they run SCHED_BATCH, so that on a box shared with
            /// gustd their wake-ups do not preempt its event loop (clients on
            /// other machines never do)
            #[argh(switch)]
            pub sched_normal: bool,

            $(
                $(#[$field_meta])*
                pub $field: $($ty)*,
            )*
        }

        impl $name {
            pub fn common(&self) -> Common {
                Common {
                    target: self.target.clone(),
                    threads: self
                        .threads
                        .unwrap_or_else(<Self as ScenarioDefaults>::default_threads),
                    source: self.source.clone(),
                    connect_rate: self.connect_rate,
                    connect_inflight: self.connect_inflight,
                    users_file: self.users_file.clone(),
                    setup_threads: self.setup_threads,
                    json_out: self.json_out.clone(),
                    server_pid: self.server_pid,
                    server_flags: self.server_flags.clone(),
                    smoke: self.smoke,
                    psk_file: self.psk_file.clone(),
                    handshake_timeout_secs: self.handshake_timeout_secs,
                    sched_normal: self.sched_normal,
                }
            }
        }
    };
}

scenario_args! {
    /// connection + hello + resume rate, and the time to reach N connections
    #[argh(subcommand, name = "connect")]
    pub struct ConnectArgs {
        /// connections to open (default 10000; 50 with --smoke)
        #[argh(option)]
        pub connections: [Option<usize>],
    }
}

scenario_args! {
    /// hold N authenticated connections with heartbeats; server memory per
    /// connection and CPU while idle
    #[argh(subcommand, name = "idle")]
    pub struct IdleArgs {
        /// connections to hold (default 10000; 50 with --smoke)
        #[argh(option)]
        pub connections: [Option<usize>],

        /// seconds to hold them once all are authenticated (default 30; 2 with --smoke)
        #[argh(option)]
        pub seconds: [Option<u64>],
    }
}

scenario_args! {
    /// N/2 pairs exchange 1:1 messages; acked and delivered messages per
    /// second, send->ack and send->deliver latency
    #[argh(subcommand, name = "chat")]
    pub struct ChatArgs {
        /// connections, two per pair (default 10000; 50 with --smoke)
        #[argh(option)]
        pub connections: [Option<usize>],

        /// seconds of sending (default 20; 2 with --smoke)
        #[argh(option)]
        pub seconds: [Option<u64>],

        /// text bytes per message, at least 48 (the send stamp; default 100)
        #[argh(option, default = "100")]
        pub size: [usize],

        /// unacknowledged sends per connection (default 8)
        #[argh(option, default = "8")]
        pub window: [usize],

        /// aggregate messages per second over all senders instead of sending
        /// as fast as the window allows (default 0: window only); a rate
        /// also reports latency counted from each send's due time, which
        /// includes the generator's own lateness
        #[argh(option, default = "0")]
        pub rate: [u64],

        /// milliseconds from a receiver's first unacknowledged delivery to its
        /// cumulative delivery ack, timed per receiver (default 100)
        #[argh(option, default = "100")]
        pub ack_interval_ms: [u64],

        /// seconds to wait, after sending stops, for the last acks and
        /// deliveries (default 30)
        #[argh(option, default = "30")]
        pub drain_secs: [u64],

        /// also report send->deliver percentiles per window of this many
        /// milliseconds of the run, by delivery time, to show when the
        /// slow deliveries came (default 0: off)
        #[argh(option, default = "0")]
        pub timeline_ms: [u64],
    }
}

scenario_args! {
    /// one sender puts K messages into a conversation while the receiver is
    /// offline; then the receiver connects and syncs: time and messages/s
    #[argh(subcommand, name = "sync")]
    pub struct SyncArgs {
        /// messages to send while the receiver is offline (default 100000;
        /// 500 with --smoke)
        #[argh(option)]
        pub messages: [Option<u64>],

        /// text bytes per message, at least 48 (the send stamp; default 100)
        #[argh(option, default = "100")]
        pub size: [usize],

        /// unacknowledged sends while filling the conversation (default 64)
        #[argh(option, default = "64")]
        pub window: [usize],

        /// seconds without a sync page (or an ack while filling) before the
        /// run fails (default 30)
        #[argh(option, default = "30")]
        pub stall_secs: [u64],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::from_args(&["gust-bench"], args).map_err(|e| e.output)
    }

    #[test]
    fn flags_follow_the_scenario() {
        let args = parse(&[
            "chat",
            "--connections",
            "10",
            "--window",
            "4",
            "--smoke",
            "--source",
            "127.0.0.2-9",
        ])
        .unwrap();
        let ScenarioArgs::Chat(chat) = args.scenario else {
            panic!("not chat");
        };
        assert_eq!(chat.connections, Some(10));
        assert_eq!(chat.window, 4);
        assert_eq!(chat.seconds, None);
        let common = chat.common();
        assert!(common.smoke);
        assert_eq!(common.threads, default_threads());
        assert!(common.threads >= 1);
        let ScenarioArgs::Connect(connect) = parse(&["connect"]).unwrap().scenario else {
            panic!("not connect");
        };
        assert_eq!(connect.common().threads, all_cores());
        let ScenarioArgs::Connect(connect) =
            parse(&["connect", "--threads", "3"]).unwrap().scenario
        else {
            panic!("not connect");
        };
        assert_eq!(connect.common().threads, 3, "an explicit --threads wins");
        assert_eq!(common.target, "127.0.0.1:7700");
        assert_eq!(common.source.as_deref(), Some("127.0.0.2-9"));
        assert!(!common.sched_normal, "workers run SCHED_BATCH by default");
        let ScenarioArgs::Chat(chat) = parse(&["chat", "--sched-normal"]).unwrap().scenario else {
            panic!("not chat");
        };
        assert!(chat.common().sched_normal);
    }

    #[test]
    fn every_scenario_parses() {
        for scenario in ["connect", "idle", "chat", "sync"] {
            assert!(parse(&[scenario]).is_ok(), "{scenario}");
        }
        assert!(parse(&[
            "sync",
            "--messages",
            "7",
            "--server-flags",
            "--durability buffered"
        ])
        .is_ok());
        assert!(parse(&["fly"]).is_err());
    }
}
