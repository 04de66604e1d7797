//! `gust`: the command-line client. All of it lives in `gust::client::cli`,
//! which builds without the server feature.

fn main() {
    std::process::exit(gust::client::cli::main_with_args());
}
