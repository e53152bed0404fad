//! Thin wrappers over the kernel interfaces the daemon uses. `unsafe` lives in small wrappers,
//! each block with a `// SAFETY:` comment: here, and in `backend/queue_track.rs` for the memory
//! it shares with the BPF programs. The one `unsafe fn`, `process::daemonize`, has a caller
//! precondition; its caller in `daemon.rs` says why it holds.

#![warn(missing_docs)]

pub mod caps;
pub mod debugfs;
pub mod dl_server;
pub mod lines;
pub mod mapped_file;
pub mod notify;
pub mod proc_files;
pub mod process;
pub mod root;
pub mod run_dir;
pub mod sched;
pub mod sched_features;
pub mod signal;
pub mod throttling;
