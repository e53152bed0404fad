//! Backend selection: the one `-b` names, or the first that opens of queue_track,
//! sched_debug and procfs, each one passed over logged with its reason.

use crate::backend::sched_debug::SchedDebugBackend;
use crate::backend::Backend;
use crate::config::{BackendChoice, Config};
use crate::log::{Log, Logger};
#[cfg(feature = "bpf")]
use crate::sys::process;

/// Opens the backend `config` asks for. Without `-b`, tries queue_track, sched_debug and
/// procfs in turn, logging in one line why each one passed over cannot be used; a backend
/// named with `-b` is the only one tried.
pub fn open_backend(config: &Config, logger: &mut Logger) -> Result<Box<dyn Backend>, String> {
    use BackendChoice::{Procfs, QueueTrack, SchedDebug};
    let candidates: &[BackendChoice] = match config.backend {
        BackendChoice::Auto => &[QueueTrack, SchedDebug, Procfs],
        QueueTrack => &[QueueTrack],
        SchedDebug => &[SchedDebug],
        Procfs => &[Procfs],
    };
    let mut reason = String::new();
    for (i, &choice) in candidates.iter().enumerate() {
        if i > 0 {
            logger.warn(format_args!(
                "{} backend unavailable: {reason}; trying {}",
                candidates[i - 1].name(),
                choice.name()
            ));
        }
        match open_one_backend(choice, config) {
            Ok(backend) => return Ok(backend),
            Err(e) => reason = e,
        }
    }
    let last = candidates[candidates.len() - 1];
    Err(format!("cannot use the {} backend: {reason}", last.name()))
}

fn open_one_backend(choice: BackendChoice, config: &Config) -> Result<Box<dyn Backend>, String> {
    match choice {
        BackendChoice::Auto | BackendChoice::QueueTrack => open_queue_track(config),
        BackendChoice::SchedDebug => SchedDebugBackend::open()
            .map(|b| Box::new(b) as Box<dyn Backend>)
            .map_err(|e| e.to_string()),
        BackendChoice::Procfs => {
            crate::backend::procfs::ProcfsBackend::open(&config.monitored_cpus)
                .map(|b| Box::new(b) as Box<dyn Backend>)
        }
    }
}

#[cfg(feature = "bpf")]
fn open_queue_track(config: &Config) -> Result<Box<dyn Backend>, String> {
    crate::backend::queue_track::QueueTrackBackend::open(
        &config.monitored_cpus,
        process::configured_cpus(),
    )
    .map(|b| Box::new(b) as Box<dyn Backend>)
}

#[cfg(not(feature = "bpf"))]
fn open_queue_track(_: &Config) -> Result<Box<dyn Backend>, String> {
    Err("this stalld was built without BPF support (cargo feature `bpf`)".into())
}
