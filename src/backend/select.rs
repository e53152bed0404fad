//! Backend selection: the one `-b` names, or the first that opens in the table's order, each
//! one passed over logged in one line with its reason.

use core::fmt;

use super::{AnyBackend, BackendKind, Unavailable, BACKENDS};
use crate::config::BackendChoice;
use crate::cpuset::CpuSet;
use crate::log::Log;

/// The backend that was tried last could not be used either.
#[derive(Debug)]
pub struct NoBackend {
    /// The backend tried last.
    pub kind: BackendKind,
    /// Why it cannot be used.
    pub reason: Unavailable,
}

impl fmt::Display for NoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot use the {} backend: {}",
            self.kind.name(),
            self.reason
        )
    }
}

impl std::error::Error for NoBackend {}

/// Opens the backend `choice` asks for on the `monitored` CPUs. Without `-b`, tries every
/// backend in the table's order, logging why each one passed over cannot be used; a backend
/// named with `-b` is the only one tried.
pub fn open_backend(
    choice: BackendChoice,
    monitored: &CpuSet,
    log: &mut impl Log,
) -> Result<AnyBackend, NoBackend> {
    // The table has at least one row (the macro requires it).
    let (mut kind, mut next): (BackendKind, &[BackendKind]) = match choice {
        BackendChoice::Auto => (BACKENDS[0], &BACKENDS[1..]),
        BackendChoice::Only(kind) => (kind, &[]),
    };
    loop {
        let reason = match AnyBackend::open(kind, monitored) {
            Ok(backend) => return Ok(backend),
            Err(reason) => reason,
        };
        let Some((&after, rest)) = next.split_first() else {
            return Err(NoBackend { kind, reason });
        };
        log.warn(format_args!(
            "{} backend unavailable: {reason}; trying {}",
            kind.name(),
            after.name()
        ));
        (kind, next) = (after, rest);
    }
}
