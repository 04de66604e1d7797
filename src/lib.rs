//! gust: an instant-messaging server appliance for one box.
//!
//! - [`protocol`]: the wire format, sans-I/O (always built; fuzzed alone).
//! - [`client`]: a blocking client library (always built).
//! - [`chat`]: domain logic (accounts, chat, sync), free of sockets.
//! - [`store`]: the RocksDB store behind a narrow interface.
//! - [`server`]: shards, connections, timers, configuration.
//! - [`threads`]: this process's threads by name, and their scheduling policy.
//!
//! `chat`, `store` and `server` need the `server` feature (RocksDB); the
//! protocol and the client build without it.

#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "server")]
pub mod chat;
pub mod client;
pub mod limits;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
#[cfg(any(feature = "bench", feature = "server"))]
pub mod threads;
