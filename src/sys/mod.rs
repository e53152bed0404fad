//! Thin wrappers over the kernel interfaces the daemon uses. Every `unsafe` lives here.

pub mod dl_server;
pub mod lines;
pub mod process;
pub mod procfs;
pub mod sched;
pub mod signal;
pub mod throttling;
