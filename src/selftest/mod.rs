//! `stalld --selftest[=CPU]`: "does it work on my image?" for integrators. Probes what the
//! kernel offers (rows of [`probe`]), then really starves a task of its own on `CPU` under a
//! stalld child for each backend that opens ([`rescue`]), and prints one table. Protection
//! works when the backend stalld picks by default rescues and restores the thread.

mod probe;
mod rescue;

use std::io::{self, Write};

use crate::backend::BackendKind;
use crate::config::Config;
use crate::sys::process;

/// Exit code when protection does not work (or the test cannot run).
const FAILED: i32 = 1;

/// Runs the self-test with the rescue on `cpu` and `config`'s boost and self-scheduling
/// options, prints the table to `out`, returns the exit code: 0 when protection works, 1 with
/// the reason when not.
pub fn run(cpu: u32, config: &Config, out: &mut impl Write) -> i32 {
    match run_checked(cpu, config, out) {
        Ok(true) => 0,
        Ok(false) => FAILED,
        Err(e) => {
            let _ = writeln!(out, "stalld: self-test cannot go on: {e}");
            FAILED
        }
    }
}

fn run_checked(cpu: u32, config: &Config, out: &mut impl Write) -> io::Result<bool> {
    if !process::is_root() {
        writeln!(
            out,
            "result: FAIL: the self-test starves a task: run it as root"
        )?;
        return Ok(false);
    }
    let nr_cpus = process::configured_cpus();
    if nr_cpus < 2 {
        writeln!(
            out,
            "result: FAIL: one CPU only: stalld needs a CPU of its own besides the one it watches"
        )?;
        return Ok(false);
    }
    // Stay off the CPU under test: the hog takes it from us too.
    let others = (0..nr_cpus).filter(|&other| other != cpu);
    if let Err(e) = crate::sys::sched::set_affinity(0, others) {
        writeln!(out, "result: FAIL: cannot move off CPU {cpu}: {e}")?;
        return Ok(false);
    }

    writeln!(out, "stalld {} self-test, CPU {cpu}", crate::cli::version())?;
    for row in probe::kernel_rows(cpu) {
        print_row(out, &row.label, &row.value)?;
    }
    let usable = probe::backends_usable(cpu);
    for (kind, opened) in &usable {
        let value = match opened {
            Ok(()) => "opens".to_owned(),
            Err(e) => format!("unusable: {e}"),
        };
        print_row(out, &format!("backend {}", kind.name()), &value)?;
    }
    print_row(
        out,
        "stalld child options",
        &rescue::child_options(config).join(" "),
    )?;
    out.flush()?;

    let mut default_verdict: Option<Result<(), String>> = None;
    for (kind, opened) in usable {
        if opened.is_err() {
            continue;
        }
        let verdict = rescue_row(kind, cpu, config, out)?;
        // stalld picks the first backend that opens.
        default_verdict.get_or_insert(verdict.map(|_| ()));
    }
    let works = match default_verdict {
        None => {
            writeln!(out, "result: FAIL: no backend can be used on this kernel")?;
            false
        }
        Some(Ok(())) => {
            writeln!(out, "result: OK: stalld protects CPU {cpu}")?;
            true
        }
        Some(Err(why)) => {
            writeln!(out, "result: FAIL: the default backend {why}")?;
            false
        }
    };
    Ok(works)
}

/// Runs one rescue and prints its row; the error is why it did not protect.
fn rescue_row(
    kind: BackendKind,
    cpu: u32,
    config: &Config,
    out: &mut impl Write,
) -> io::Result<Result<(), String>> {
    let label = format!("rescue {}", kind.name());
    let verdict = match rescue::rescue(kind, cpu, config) {
        Ok(outcome) => {
            let starved_ms = i64::try_from(outcome.starved_for.as_millis()).unwrap_or(i64::MAX);
            let threshold_ms = i64::try_from(rescue::THRESHOLD.as_millis()).unwrap_or(0);
            let past = starved_ms - threshold_ms;
            let mut value = if outcome.rescued {
                format!(
                    "rescued {past:+} ms past the {} s threshold",
                    rescue::THRESHOLD.as_secs()
                )
            } else {
                format!("NOT rescued: starved {starved_ms} ms")
            };
            match outcome.boosted_after {
                Some(after) => {
                    value.push_str(&format!(" (boost logged at {} ms)", after.as_millis()))
                }
                None => value.push_str(" (no boost logged)"),
            }
            value.push_str(if outcome.restored {
                ", restored"
            } else {
                ", NOT restored"
            });
            if outcome.exit_code != Some(0) {
                value.push_str(&format!(
                    ", exit code {:?} after SIGTERM",
                    outcome.exit_code
                ));
            }
            if !outcome.throttling_restored {
                value.push_str(", RT throttling NOT restored");
            }
            print_row(out, &label, &value)?;
            if outcome.protected() {
                Ok(())
            } else {
                Err(format!("{} did not protect: {value}", kind.name()))
            }
        }
        Err(e) => {
            print_row(out, &label, &format!("could not run: {e}"))?;
            Err(format!("{}: {e}", kind.name()))
        }
    };
    out.flush()?;
    Ok(verdict)
}

fn print_row(out: &mut impl Write, label: &str, value: &str) -> io::Result<()> {
    writeln!(out, "  {label:<22} {value}")
}
