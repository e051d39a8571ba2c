//! xbench: serve cross-encoder rerank models and measure, by sweeps of configurations, how to serve
//! them best. The library holds everything; the `xbench` binary parses the command line and calls
//! [`cli::run`].

pub mod accuracy;
pub mod backend;
pub mod batch;
pub mod cli;
pub mod config;
pub mod engine;
/// The fused CPU kernels (the `xbench-kernels` crate of this workspace).
pub use xbench_kernels as kernels;
pub mod loadgen;
pub mod model;
pub mod report;
pub mod score;
pub mod server;
pub mod testing;
pub mod tokenize;
