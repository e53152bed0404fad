//! RT throttling's value from before it was turned off, saved in `/run/stalld/rt_runtime_us`
//! (mode 0600) by whoever turned it off: the daemon, or `stalld throttlectl off` (which
//! replaces upstream's shell helper of that name). Invariant: the file exists exactly while
//! throttling is off on someone's behalf, so a value is never lost when a daemon dies, and a
//! daemon started after one that died never takes `-1` for the original value.

use std::path::{Path, PathBuf};

use crate::sys::run_dir::{self, InstanceLock, Locked, RUN_DIR};
use crate::sys::throttling::{RtThrottling, ThrottlingGuard, THROTTLING_OFF};

/// The saved value's name in the run directory.
pub const SAVED_FILE: &str = "rt_runtime_us";
/// The kernel's default `sched_rt_runtime_us`, written by `throttlectl on` when no value was
/// saved and throttling is off.
pub const KERNEL_DEFAULT_RUNTIME_US: i64 = 950_000;

/// The usage of `stalld throttlectl`.
pub const USAGE: &str = "usage: stalld throttlectl off|on|show
  off   save sched_rt_runtime_us in /run/stalld/rt_runtime_us and turn RT throttling off
  on    turn RT throttling back on with the saved value (950000 if none was saved)
  show  print the current and the saved value
";

/// The saved value's file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedRuntime {
    path: PathBuf,
}

impl SavedRuntime {
    /// The file in the run directory `dir`.
    pub fn in_dir(dir: &Path) -> SavedRuntime {
        SavedRuntime {
            path: dir.join(SAVED_FILE),
        }
    }

    /// The saved value, `None` if none is saved.
    pub fn read(&self) -> Result<Option<i64>, String> {
        let Some(text) = run_dir::read_file(&self.path)? else {
            return Ok(None);
        };
        text.trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{}: not a number: {:?}", self.path.display(), text.trim()))
    }

    /// Saves `runtime_us` (the run directory is created if needed).
    pub fn write(&self, runtime_us: i64) -> Result<(), String> {
        if let Some(dir) = self.path.parent() {
            run_dir::ensure_dir(dir)?;
        }
        run_dir::write_file(&self.path, &format!("{runtime_us}\n"))
    }

    /// Forgets the saved value.
    pub fn remove(&self) -> Result<(), String> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot remove {}: {e}", self.path.display())),
        }
    }
}

/// RT throttling turned off by the daemon: turned back on, and the saved value forgotten,
/// by [`TurnedOff::restore`] or, failing that, when dropped (on every way out of startup).
#[derive(Debug)]
pub struct TurnedOff {
    guard: ThrottlingGuard,
    saved: SavedRuntime,
    /// The value was left saved by a daemon that died, or by `throttlectl off`: throttling
    /// was off already and goes back to that value at exit.
    pub adopted: bool,
}

impl TurnedOff {
    /// The value written back at exit; `None` if throttling was off before anyone saved one.
    pub fn saved(&self) -> Option<i64> {
        self.guard.saved()
    }

    /// Turns throttling back on ([`ThrottlingGuard::restore`]); once it is, the saved value
    /// is forgotten (an error doing so is returned as the second value). Does nothing once
    /// restored or handed over.
    pub fn restore(&mut self) -> (std::io::Result<u32>, Result<(), String>) {
        if self.guard.saved().is_none() {
            return (Ok(0), Ok(()));
        }
        let result = self.guard.restore();
        let forgotten = match result {
            Ok(_) => self.saved.remove(),
            Err(_) => Ok(()),
        };
        (result, forgotten)
    }
}

impl TurnedOff {
    /// Leaves throttling off and its value saved, for the daemon that takes over
    /// ([`crate::handover`]); returns that value.
    pub fn hand_over(mut self) -> Option<i64> {
        self.guard.release()
    }
}

impl Drop for TurnedOff {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

/// Turns RT throttling off for the daemon: its value is saved first, so that it survives the
/// daemon's death. When it is off already and a value is saved, that value is the original
/// one, not `-1`.
pub fn turn_off(throttling: &RtThrottling, saved: &SavedRuntime) -> Result<TurnedOff, String> {
    let current = throttling.read().map_err(|e| e.to_string())?;
    if current == THROTTLING_OFF {
        if let Some(original) = saved.read()?.filter(|&v| v != THROTTLING_OFF) {
            return Ok(TurnedOff {
                guard: throttling.adopt(original),
                saved: saved.clone(),
                adopted: true,
            });
        }
    } else {
        saved.write(current)?;
    }
    let guard = throttling.disable().map_err(|e| e.to_string())?;
    Ok(TurnedOff {
        guard,
        saved: saved.clone(),
        adopted: false,
    })
}

/// `stalld throttlectl ARGS`: returns the exit code (22 for bad usage, as the daemon's CLI).
pub fn main(args: &[String]) -> i32 {
    let throttling = RtThrottling::default();
    let saved = SavedRuntime::in_dir(Path::new(RUN_DIR));
    let result = match args {
        [cmd] if cmd == "show" => show(&throttling, &saved),
        [cmd] if cmd == "off" => off_unless_early_instance(&throttling, &saved),
        [cmd] if cmd == "on" => with_no_daemon(|| on(&throttling, &saved)),
        _ => {
            eprint!("{USAGE}");
            return 22;
        }
    };
    match result {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(e) => {
            eprintln!("stalld throttlectl: {e}");
            1
        }
    }
}

/// `off` holding the daemon's instance lock. Held by an early instance
/// ([`crate::handover`]) while RT throttling is off with a value saved, there is nothing to do:
/// `throttlectl off` before the real system's stalld (its unit's `ExecStartPre=`) succeeds, and
/// the handover keeps throttling off.
fn off_unless_early_instance(
    throttling: &RtThrottling,
    saved: &SavedRuntime,
) -> Result<String, String> {
    match InstanceLock::try_take(Path::new(RUN_DIR))? {
        Locked::Taken(_lock) => off(throttling, saved),
        Locked::Held { pid: Some(pid), .. }
            if throttling.is_off().unwrap_or(false)
                && saved.read().is_ok_and(|v| v.is_some())
                && crate::handover::is_early_instance(pid) =>
        {
            Ok(format!(
                "RT throttling already off on behalf of the stalld started in the initramfs \
                 (pid {pid}), which hands over to the next stalld started"
            ))
        }
        Locked::Held { message, .. } => Err(message),
    }
}

/// Runs `f` holding the daemon's instance lock: a running daemon owns RT throttling.
fn with_no_daemon(f: impl FnOnce() -> Result<String, String>) -> Result<String, String> {
    let _lock = InstanceLock::take(Path::new(RUN_DIR))?;
    f()
}

fn show(throttling: &RtThrottling, saved: &SavedRuntime) -> Result<String, String> {
    let current = throttling.read().map_err(|e| e.to_string())?;
    let state = if current == THROTTLING_OFF {
        "off"
    } else {
        "on"
    };
    Ok(match saved.read()? {
        Some(value) => {
            format!("RT throttling is {state} (sched_rt_runtime_us {current}), saved value {value}")
        }
        None => format!("RT throttling is {state} (sched_rt_runtime_us {current}), no saved value"),
    })
}

fn off(throttling: &RtThrottling, saved: &SavedRuntime) -> Result<String, String> {
    let current = throttling.read().map_err(|e| e.to_string())?;
    if current == THROTTLING_OFF {
        return Ok("RT throttling already off, nothing saved".into());
    }
    saved.write(current)?;
    // The value lives in the saved file now: the guard must not put it back.
    throttling.disable().map_err(|e| e.to_string())?.release();
    Ok(format!("RT throttling off (saved {current})"))
}

fn on(throttling: &RtThrottling, saved: &SavedRuntime) -> Result<String, String> {
    let current = throttling.read().map_err(|e| e.to_string())?;
    let value = match saved.read()? {
        Some(value) => value,
        None if current == THROTTLING_OFF => KERNEL_DEFAULT_RUNTIME_US,
        None => {
            return Ok(format!(
                "RT throttling already on ({current}), nothing saved"
            ))
        }
    };
    throttling
        .adopt(value)
        .restore()
        .map_err(|e| e.to_string())?;
    saved.remove()?;
    Ok(format!("RT throttling on ({value})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> (PathBuf, RtThrottling, SavedRuntime) {
        let dir =
            std::env::temp_dir().join(format!("stalld-throttlectl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let knob = dir.join("knob");
        std::fs::write(&knob, "900000\n").unwrap();
        let run = dir.join("run");
        (dir, RtThrottling::at(knob), SavedRuntime::in_dir(&run))
    }

    #[test]
    fn off_saves_on_restores_and_forgets() {
        let (dir, knob, saved) = temp("cycle");
        assert_eq!(
            off(&knob, &saved).unwrap(),
            "RT throttling off (saved 900000)"
        );
        assert_eq!(knob.read().unwrap(), -1);
        assert_eq!(saved.read().unwrap(), Some(900000));
        // A second off keeps the first value.
        off(&knob, &saved).unwrap();
        assert_eq!(saved.read().unwrap(), Some(900000));
        assert!(show(&knob, &saved).unwrap().contains("off"));
        assert_eq!(on(&knob, &saved).unwrap(), "RT throttling on (900000)");
        assert_eq!(knob.read().unwrap(), 900000);
        assert_eq!(saved.read().unwrap(), None);
        assert!(on(&knob, &saved).unwrap().contains("already on"));
        std::fs::write(dir.join("knob"), "-1\n").unwrap();
        assert_eq!(on(&knob, &saved).unwrap(), "RT throttling on (950000)");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_daemon_after_one_that_died_adopts_the_saved_value() {
        let (dir, knob, saved) = temp("adopt");
        let first = turn_off(&knob, &saved).unwrap();
        assert!(!first.adopted);
        assert_eq!(saved.read().unwrap(), Some(900000));
        // The first daemon dies: its guard never runs.
        std::mem::forget(first);
        assert_eq!(knob.read().unwrap(), -1);
        let second = turn_off(&knob, &saved).unwrap();
        assert!(second.adopted);
        assert_eq!(second.saved(), Some(900000));
        drop(second);
        assert_eq!(knob.read().unwrap(), 900000);
        assert_eq!(saved.read().unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
