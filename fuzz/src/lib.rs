//! What the fuzz targets share: a copy of `conf/` to compose in, and one server on a tiny model.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use xbench::server::BackgroundServer;
use xbench::testing::{copy_dir, tiny_server};

/// A copy of the repository's `conf/`, so a target can add its own experiment file.
pub fn conf() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf"),
            dir.path(),
        )
        .expect("copy conf/");
        dir
    })
    .path()
}

/// One server on a tiny model ([`tiny_server`]), started on first use, and a client for it.
pub fn server() -> &'static (BackgroundServer, reqwest::blocking::Client) {
    static SERVER: OnceLock<(
        tempfile::TempDir,
        (BackgroundServer, reqwest::blocking::Client),
    )> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let server = tiny_server(dir.path()).expect("start the server");
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client");
            (dir, (server, client))
        })
        .1
}
