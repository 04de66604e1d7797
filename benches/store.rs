//! Store appends in batches, with each durability mode: the ceiling the
//! storage writer works under (compare ../shared/MACHINE-FACTS.md).
//!
//! `cargo bench --bench store`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gust::store::{Durability, Store};

fn appends(c: &mut Criterion) {
    let value = vec![0x5Au8; 200];
    let mut group = c.benchmark_group("store append");
    group.sample_size(20);
    for durability in [Durability::Sync, Durability::Buffered] {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), durability).expect("open");
        let mut seq = 0u64;
        for batch_len in [1u64, 100, 1000] {
            group.throughput(Throughput::Elements(batch_len));
            group.bench_function(format!("{durability:?}, batches of {batch_len}"), |b| {
                b.iter_batched(
                    || {
                        let mut batch = store.batch();
                        for _ in 0..batch_len {
                            seq += 1;
                            batch
                                .put_message(seq % 64, seq, Bytes::copy_from_slice(&value))
                                .expect("put");
                        }
                        batch
                    },
                    |batch| store.commit(batch).expect("commit"),
                    BatchSize::PerIteration,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
