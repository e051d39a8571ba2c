//! xbench: serve cross-encoder rerank models and measure, by sweeps of configurations, how to serve
//! them best. The library holds everything; the `xbench` binary parses the command line and calls
//! [`cli::run`].

pub mod accuracy;
pub mod backend;
pub mod batch;
pub mod cli;
pub mod config;
pub mod engine;
pub mod experiment;
/// The fused CPU kernels (the `xbench-kernels` crate of this workspace).
pub use xbench_kernels as kernels;
pub mod loadgen;
pub mod model;
pub mod prompt;
pub mod report;
pub mod score;
pub mod server;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tokenize;

/// An error and its causes, outermost first, joined by `: ` (what a log line or an HTTP error
/// body says).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
