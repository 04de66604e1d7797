//! gust-bench: the load generator for gustd. See `gust-bench --help`,
//! src/bench/ and benches/run.sh.

fn main() {
    std::process::exit(gust::bench::main_from_env());
}
