//! gustd: wires the shards, the storage writer, the readers and the hashers
//! together, and shuts them down in order.
//!
//! Threads: `shards` event loops (one SO_REUSEPORT listener each, so the
//! kernel spreads accepted connections without a hand-off), one storage
//! writer, `readers` reader threads and `hashers` hasher threads. See
//! ARCHITECTURE.md for the path of one message.

pub mod config;
pub mod connection;
pub mod logging;
pub mod shard;
pub mod timer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::Poll;
use socket2::{Domain, Protocol, Socket, Type};

use crate::chat::accounts::Accounts;
use crate::chat::reader::Reader;
use crate::chat::writer::Writer;
use crate::chat::{HashJob, ReaderJob, ShardEvent, ShardSink, WriterRequest};
use crate::store::background::{self, BackgroundPriority};
use crate::store::Store;
use config::{AcceptMode, Config};
use shard::{Inbox, Inboxes, Shard, Shared};

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    store: Store,
    shared: Arc<Shared>,
    inboxes: Arc<Inboxes>,
    shards: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    readers: Vec<JoinHandle<()>>,
    hashers: Vec<JoinHandle<()>>,
    /// The background governor (`store::background`), when it runs.
    governor: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
    writer_tx: mpsc::Sender<WriterRequest>,
    readers_tx: mpsc::Sender<ReaderJob>,
    hashers_tx: mpsc::Sender<HashJob>,
}

fn listener(addr: SocketAddr) -> std::io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(crate::limits::LISTEN_BACKLOG)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

impl Server {
    /// Opens the store, binds the listeners and starts every thread.
    pub fn start(config: Config) -> Result<Server, String> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("cannot create {}: {e}", config.data_dir.display()))?;
        let store = Store::open_with(&config.data_dir, config.store).map_err(|e| {
            format!(
                "cannot open the store in {}: {e}",
                config.data_dir.display()
            )
        })?;

        // Bind every shard's listener first: the first bind fixes the port
        // when 0 was asked for, the others share it through SO_REUSEPORT.
        let mut polls = Vec::new();
        let mut listeners = Vec::new();
        let mut addr = config.listen;
        for shard in 0..config.shards {
            if shard == 0 || config.accept_mode == AcceptMode::ReusePort {
                let listener =
                    listener(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
                addr = listener.local_addr().map_err(|e| e.to_string())?;
                listeners.push(Some(listener));
            } else {
                listeners.push(None);
            }
            polls.push(Poll::new().map_err(|e| format!("cannot create a poll: {e}"))?);
        }
        let mut inboxes = Vec::new();
        for poll in &polls {
            inboxes.push(Arc::new(
                Inbox::new(poll).map_err(|e| format!("cannot create a waker: {e}"))?,
            ));
        }
        let inboxes = Arc::new(Inboxes(inboxes));
        let sink: Arc<dyn ShardSink> = inboxes.clone();

        let (writer_tx, writer_rx) = mpsc::channel();
        let (readers_tx, readers_rx) = mpsc::channel();
        let (hashers_tx, hashers_rx) = mpsc::channel();

        let writer = Writer::new(store.clone(), sink.clone(), config.writer.clone())
            .map_err(|e| format!("cannot start the storage writer: {e}"))?;
        let writer = std::thread::Builder::new()
            .name("gust-writer".into())
            .spawn(move || writer.run(writer_rx))
            .map_err(|e| e.to_string())?;
        let reader = Arc::new(Reader::new(
            store.clone(),
            sink.clone(),
            writer_tx.clone(),
            config.reader.clone(),
        ));
        let readers = reader.spawn(config.readers, readers_rx);
        let accounts = Arc::new(Accounts::new(
            &config.accounts,
            store.clone(),
            writer_tx.clone(),
            sink.clone(),
        )?);
        let hashers = accounts.spawn(config.hashers, hashers_rx);

        let shared = Arc::new(Shared {
            config: config.clone(),
            inboxes: inboxes.clone(),
            writer: writer_tx.clone(),
            readers: readers_tx.clone(),
            hashers: hashers_tx.clone(),
            open_connections: AtomicUsize::new(0),
        });
        let mut shards = Vec::new();
        for (id, (poll, listener)) in polls.into_iter().zip(listeners).enumerate() {
            let inbox = inboxes.0[id].clone();
            let shard = Shard::new(id as u16, poll, listener, inbox, shared.clone())
                .map_err(|e| format!("cannot start shard {id}: {e}"))?;
            shards.push(
                std::thread::Builder::new()
                    .name(format!("gust-shard-{id}"))
                    .spawn(move || shard.run())
                    .map_err(|e| e.to_string())?,
            );
        }
        // Last: nothing after it can fail and leave it running.
        let governor = start_governor(&store, config.background_priority);
        log::info!(
            "gustd {} listening on {addr} with {} shards, data in {}, durability {:?}",
            env!("CARGO_PKG_VERSION"),
            config.shards,
            config.data_dir.display(),
            config.store.durability
        );
        Ok(Server {
            local_addr: addr,
            store,
            shared,
            inboxes,
            shards,
            writer: Some(writer),
            readers,
            hashers,
            governor,
            writer_tx,
            readers_tx,
            hashers_tx,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::Relaxed)
    }

    /// Graceful stop: shards send going-away and flush, then the writer
    /// commits what is pending, then the store is flushed and closed.
    pub fn shutdown(mut self) {
        log::info!("shutting down");
        self.inboxes.post(vec![ShardEvent::Shutdown]);
        for shard in self.shards.drain(..) {
            let _ = shard.join();
        }
        for _ in 0..self.hashers.len() {
            let _ = self.hashers_tx.send(HashJob::Shutdown);
        }
        for hasher in self.hashers.drain(..) {
            let _ = hasher.join();
        }
        // From here on every wait is on the store: bounded, so that a store
        // that cannot write (a full disk) does not keep gustd from exiting.
        let store_deadline = self.store.cancel_after(crate::limits::SHUTDOWN_STORE_WAIT);
        let _ = self.writer_tx.send(WriterRequest::Shutdown);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        for _ in 0..self.readers.len() {
            let _ = self.readers_tx.send(ReaderJob::Shutdown);
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        if let Some((governor, stop)) = self.governor.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = governor.join();
        }
        match self.store.flush() {
            Ok(()) => {}
            // Said when the deadline passed.
            Err(_) if self.store.cancelled() => {}
            Err(e) => log::error!("flushing the store failed: {e}"),
        }
        drop(store_deadline);
        log::info!("stopped");
    }
}

/// Starts the background governor if `--background-priority adaptive` and the
/// process may put a thread back at normal priority; otherwise RocksDB's
/// threads stay where RocksDB started them.
fn start_governor(
    store: &Store,
    priority: BackgroundPriority,
) -> Option<(JoinHandle<()>, Arc<AtomicBool>)> {
    if priority == BackgroundPriority::Normal {
        return None;
    }
    if !background::can_compete_again() {
        log::warn!(
            "flushes and compactions stay at normal CPU priority: running them on idle \
             time needs CAP_SYS_NICE or an RLIMIT_NICE that allows nice 0 (LimitNICE=+0), \
             to raise them again when they fall behind"
        );
        return None;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (store, watched_store) = (store.clone(), store.clone());
    let watched = background::Watched {
        backlog: move || store.backlog(),
        write_path_busy_for: move || watched_store.write_path_busy_for(),
        threads: background::background_threads,
    };
    let governor = background::spawn_governor(watched, stop.clone());
    match governor {
        Ok(handle) => {
            log::info!("flushes and compactions run on idle CPU time until they fall behind");
            Some((handle, stop))
        }
        Err(e) => {
            log::warn!("cannot start the background governor: {e}");
            None
        }
    }
}
