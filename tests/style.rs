//! House rules that tools do not check, kept as a test (TigerBeetle keeps its
//! style linter the same way): no `unwrap`/`expect` outside tests in code that
//! handles peer input, no `get_` prefixes, every source file opens with a
//! module doc saying what it is for, and bincode is called from one module.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The part of a file before its `#[cfg(test)]` module.
fn production_part(text: &str) -> &str {
    match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => text,
    }
}

fn all_sources() -> Vec<(PathBuf, String)> {
    let mut paths = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut paths,
    );
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read source");
            (p, text)
        })
        .collect()
}

#[test]
fn no_unwrap_or_expect_where_peer_input_flows() {
    let wire_facing = [
        "src/protocol/",
        "src/server/",
        "src/chat/",
        "src/store/",
        "src/client/",
    ];
    let mut offences = Vec::new();
    for (path, text) in all_sources() {
        let relative = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .expect("inside the crate");
        let relative = relative.to_string_lossy().replace('\\', "/");
        let relative = relative.trim_start_matches('/');
        if !wire_facing.iter().any(|dir| relative.starts_with(dir))
            || relative.contains("test_server")
        {
            continue;
        }
        for (number, line) in production_part(&text).lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains(".unwrap()") || code.contains(".expect(") {
                offences.push(format!("{relative}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "unwrap/expect in wire-facing code:\n{}",
        offences.join("\n")
    );
}

#[test]
fn no_get_prefixes() {
    let mut offences = Vec::new();
    for (path, text) in all_sources() {
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("pub fn get_")
                || line.trim_start().starts_with("fn get_")
            {
                offences.push(format!("{}:{}", path.display(), number + 1));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "names say what a thing is, without get_: {offences:?}"
    );
}

#[test]
fn every_source_file_opens_with_a_module_doc() {
    let missing: Vec<String> = all_sources()
        .into_iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! module doc: {missing:?}"
    );
}

#[test]
fn bincode_is_called_from_one_module() {
    let callers: Vec<String> = all_sources()
        .into_iter()
        .filter(|(_, text)| text.contains("bincode::"))
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert_eq!(
        callers.len(),
        1,
        "bincode calls outside body_codec.rs: {callers:?}"
    );
    assert!(callers[0].ends_with("body_codec.rs"));
}

#[test]
fn rocksdb_is_imported_by_the_store_alone() {
    let importers: Vec<String> = all_sources()
        .into_iter()
        .filter(|(_, text)| text.contains("rocksdb::"))
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(
        importers.iter().all(|p| p.contains("src/store/mod.rs")),
        "rocksdb used outside the store: {importers:?}"
    );
}
