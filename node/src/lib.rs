//! The `plexus` node as a library: the binary (`src/main.rs`) is its
//! command line, and the fuzz targets (`fuzz/`) and tests reach the
//! config, RPC parameter and home parsing through it.

pub mod cli;
pub mod config;
pub mod home;
pub mod http;
pub mod jsonrpc;
pub mod node;
pub mod rpc;
pub mod tls;
pub mod ws;
