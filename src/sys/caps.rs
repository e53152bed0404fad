//! Capabilities after startup: every one the running daemon no longer needs is dropped from
//! its permitted, effective, inheritable and bounding sets, and `no_new_privs` is set, so that
//! a bug in the loop cannot be turned into more than boosting tasks. Startup only.

use rustix::thread::{
    capabilities, remove_capability_from_bounding_set, set_capabilities, set_no_new_privs,
    CapabilitySet, CapabilitySets,
};

/// What the daemon still needs once it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// The debugfs the daemon mounted is unmounted at exit (`umount2`: CAP_SYS_ADMIN).
    pub unmount: bool,
    /// The BPF maps are read in the loop: kernels before 6.5 check `bpf_capable()` on every
    /// `bpf()` call while `kernel.unprivileged_bpf_disabled` is set.
    pub bpf: bool,
    /// Started from an initramfs: following PID 1 after switch_root reads `/proc/1/root`
    /// (CAP_SYS_PTRACE: PID 1 holds every capability, the daemon then fewer) and `chroot`s
    /// there (CAP_SYS_CHROOT).
    pub follow_root: bool,
}

/// The capabilities kept for `needs`: CAP_SYS_NICE (boosts, restores, and the daemon's own
/// policy), CAP_IPC_LOCK (`mlockall(MCL_FUTURE)` keeps locking what is mapped later, beyond
/// RLIMIT_MEMLOCK), CAP_BPF (or CAP_SYS_ADMIN before CAP_BPF existed) for BPF maps,
/// CAP_SYS_ADMIN for an unmount. Writing `sched_rt_runtime_us` and the files under
/// `/run/stalld/` needs none: they belong to root, which the daemon stays.
pub fn kept(needs: Needs, last_cap: u32) -> CapabilitySet {
    let mut keep = CapabilitySet::SYS_NICE | CapabilitySet::IPC_LOCK;
    if needs.bpf {
        keep |= if last_cap >= CapabilitySet::BPF.bits().trailing_zeros() {
            CapabilitySet::BPF
        } else {
            CapabilitySet::SYS_ADMIN
        };
    }
    if needs.unmount {
        keep |= CapabilitySet::SYS_ADMIN;
    }
    if needs.follow_root {
        keep |= CapabilitySet::SYS_PTRACE | CapabilitySet::SYS_CHROOT;
    }
    keep
}

/// The names of `set`'s capabilities, e.g. `CAP_SYS_NICE, CAP_IPC_LOCK`.
pub fn names(set: CapabilitySet) -> String {
    const NAMES: [(CapabilitySet, &str); 6] = [
        (CapabilitySet::SYS_NICE, "CAP_SYS_NICE"),
        (CapabilitySet::IPC_LOCK, "CAP_IPC_LOCK"),
        (CapabilitySet::BPF, "CAP_BPF"),
        (CapabilitySet::SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CapabilitySet::SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CapabilitySet::SYS_CHROOT, "CAP_SYS_CHROOT"),
    ];
    let named: Vec<&str> = NAMES
        .iter()
        .filter(|(cap, _)| set.contains(*cap))
        .map(|(_, name)| *name)
        .collect();
    named.join(", ")
}

/// The highest capability this kernel knows (`/proc/sys/kernel/cap_last_cap`); 40 (the
/// highest in 6.x) if it cannot be read.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(40)
}

/// Drops every capability but [`kept`]`(needs)` from the bounding set, then from the
/// permitted, effective and inheritable sets (which also empties the ambient set), and sets
/// `no_new_privs`, for the calling thread: call it while the daemon has only one. Returns what
/// is kept.
pub fn drop_unneeded(needs: Needs) -> Result<CapabilitySet, String> {
    let last = last_cap();
    let keep = kept(needs, last);
    let now = capabilities(None).map_err(|e| format!("cannot read capabilities: {e}"))?;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which capset removes.
    for bit in 0..=last.min(63) {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        if !keep.contains(cap) {
            remove_capability_from_bounding_set(cap)
                .map_err(|e| format!("cannot drop capability {bit} from the bounding set: {e}"))?;
        }
    }
    let kept_now = now.permitted & keep;
    set_capabilities(
        None,
        CapabilitySets {
            effective: kept_now,
            permitted: kept_now,
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(|e| format!("cannot drop capabilities: {e}"))?;
    set_no_new_privs(true).map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    Ok(kept_now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_what_the_running_daemon_needs() {
        let base = CapabilitySet::SYS_NICE | CapabilitySet::IPC_LOCK;
        let none = Needs {
            unmount: false,
            bpf: false,
            follow_root: false,
        };
        assert_eq!(kept(none, 40), base);
        let bpf = Needs { bpf: true, ..none };
        assert_eq!(kept(bpf, 40), base | CapabilitySet::BPF);
        assert_eq!(kept(bpf, 37), base | CapabilitySet::SYS_ADMIN);
        let unmount = Needs {
            unmount: true,
            ..none
        };
        assert_eq!(kept(unmount, 40), base | CapabilitySet::SYS_ADMIN);
        let follow = Needs {
            follow_root: true,
            ..none
        };
        assert_eq!(
            kept(follow, 40),
            base | CapabilitySet::SYS_PTRACE | CapabilitySet::SYS_CHROOT
        );
    }

    /// In a forked child (the drop is for the whole rest of the process): afterwards the
    /// child can still change its own policy but can no longer, e.g., change file ownership.
    #[test]
    fn drop_in_a_child_leaves_sys_nice_and_no_new_privs() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let status = std::process::Command::new("/proc/self/exe")
            .args(["--exact", "sys::caps::tests::child_body", "--nocapture"])
            .env("STALLD_CAPS_CHILD", "1")
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}{}",
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr)
        );
    }

    #[test]
    fn child_body() {
        if std::env::var_os("STALLD_CAPS_CHILD").is_none() {
            return;
        }
        let kept = drop_unneeded(Needs {
            unmount: false,
            bpf: false,
            follow_root: false,
        })
        .unwrap();
        assert_eq!(kept, CapabilitySet::SYS_NICE | CapabilitySet::IPC_LOCK);
        let now = capabilities(None).unwrap();
        assert_eq!(now.effective, kept);
        assert_eq!(now.permitted, kept);
        assert!(!rustix::thread::capability_is_in_bounding_set(CapabilitySet::SYS_ADMIN).unwrap());
        assert!(rustix::thread::no_new_privs().unwrap());
        // Capabilities are per thread: this test's thread, not the harness's main thread.
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    }
}
