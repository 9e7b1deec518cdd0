//! The commands of the tool, one module each: its flags (a `clap::Args`
//! struct) and its `run`.

pub mod bench;
pub mod call;
pub mod completions;
pub mod endpoints;
pub mod gc;
pub mod list;
pub mod stats;
