//! `systemd/stalld.service` and `systemd/stalld.env` stay in step with the CLI: the unit's
//! `ExecStart=`, with the settings file's values substituted as systemd does it, parses to the
//! configuration the file documents, for its defaults and for every `# ex:` example it gives;
//! and the unit has upstream's variables, and passes `systemd-analyze verify` where installed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use stalld::backend::BackendKind;
use stalld::cli::{self, Command};
use stalld::config::{BackendChoice, Config, ThreadingMode};
use stalld::cpuset::CpuSet;

/// Upstream stalld's variables, in its unit's order.
const UPSTREAM_VARIABLES: [&str; 12] = [
    "CLIST", "AGGR", "BP", "BR", "BD", "THRESH", "LOGGING", "FG", "PF", "IT", "IP", "BE",
];

/// CPUs the parsed command lines are checked against (the examples name CPU 5).
const NR_CPUS: u32 = 8;

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A value as systemd's `EnvironmentFile=` reads it: `"..."` or `'...'` unquoted, a bare value
/// trimmed. Backslashes, which systemd would interpret, are refused rather than guessed.
fn unquote(raw: &str) -> String {
    let raw = raw.trim();
    assert!(
        !raw.contains('\\'),
        "{raw:?}: escapes are not supported by this check"
    );
    for quote in ['"', '\''] {
        if let Some(inner) = raw.strip_prefix(quote) {
            let inner = inner
                .strip_suffix(quote)
                .unwrap_or_else(|| panic!("{raw:?}: unterminated quote"));
            assert!(!inner.contains(quote), "{raw:?}: a quote inside");
            return inner.to_owned();
        }
    }
    raw.to_owned()
}

/// The settings file: its assignments, and the `# ex: NAME=value` example of each variable.
struct Settings {
    values: BTreeMap<String, String>,
    examples: BTreeMap<String, String>,
}

fn settings() -> Settings {
    let mut values = BTreeMap::new();
    let mut examples = BTreeMap::new();
    for line in read("stalld.env").lines() {
        let line = line.trim();
        if let Some(example) = line.strip_prefix("# ex: ") {
            let (name, value) = example.split_once('=').expect("# ex: NAME=value");
            let old = examples.insert(name.to_owned(), unquote(value));
            assert!(old.is_none(), "two examples for {name}");
        } else if !line.is_empty() && !line.starts_with('#') && !line.starts_with(';') {
            let (name, value) = line.split_once('=').expect("NAME=value");
            let old = values.insert(name.trim().to_owned(), unquote(value));
            assert!(old.is_none(), "{name} set twice");
        }
    }
    Settings { values, examples }
}

/// The unit's `ExecStart=` words.
fn exec_start() -> Vec<String> {
    let unit = read("stalld.service");
    let mut lines = unit.lines().filter_map(|l| l.strip_prefix("ExecStart="));
    let line = lines.next().expect("an ExecStart= line");
    assert!(lines.next().is_none(), "one ExecStart= line");
    line.split_whitespace().map(str::to_owned).collect()
}

/// `ExecStart=` expanded as systemd does: a word `$NAME` becomes the value's words (none when
/// empty or unset), `${NAME}` the value as one word; the first word is the program.
fn expand(words: &[String], env: &BTreeMap<String, String>) -> (String, Vec<OsString>) {
    let mut args = Vec::new();
    for word in words {
        if let Some(name) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            args.push(OsString::from(env.get(name).cloned().unwrap_or_default()));
        } else if let Some(name) = word.strip_prefix('$') {
            let value = env.get(name).map(String::as_str).unwrap_or("");
            args.extend(value.split_whitespace().map(OsString::from));
        } else {
            assert!(!word.contains('$'), "{word:?}: a variable inside a word");
            args.push(OsString::from(word));
        }
    }
    let program = args.remove(0).into_string().unwrap();
    (program, args)
}

fn parse(env: &BTreeMap<String, String>) -> Config {
    let (program, args) = expand(&exec_start(), env);
    assert_eq!(program, "/usr/bin/stalld");
    match cli::parse(args.clone(), NR_CPUS) {
        Ok(Command::Run(config)) => config,
        other => panic!("stalld {args:?}: {other:?}"),
    }
}

/// What the settings file's defaults mean: upstream's defaults, under systemd.
fn intended_defaults() -> Config {
    Config {
        systemd: true,
        foreground: true,
        pidfile: Some("/run/stalld/stalld.pid".into()),
        boost_period_ns: 1_000_000_000,
        boost_runtime_ns: 20_000,
        boost_duration: Duration::from_secs(3),
        starving_threshold: Duration::from_secs(20),
        ..Config::default_for(NR_CPUS)
    }
}

#[test]
fn unit_and_settings_have_upstreams_variables() {
    let used: Vec<String> = exec_start()
        .iter()
        .filter_map(|w| w.strip_prefix('$'))
        .map(|w| w.trim_start_matches('{').trim_end_matches('}').to_owned())
        .collect();
    assert_eq!(used, UPSTREAM_VARIABLES, "ExecStart's variables");
    let settings = settings();
    for name in UPSTREAM_VARIABLES {
        assert!(settings.values.contains_key(name), "{name} not set");
        assert!(
            settings.examples.contains_key(name),
            "{name} has no example"
        );
    }
    assert_eq!(settings.values.len(), UPSTREAM_VARIABLES.len());
    let unit = read("stalld.service");
    for line in [
        "Type=notify",
        "EnvironmentFile=-/etc/sysconfig/stalld",
        "EnvironmentFile=-/etc/default/stalld",
        "RuntimeDirectory=stalld",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line:?} in the unit");
    }
}

#[test]
fn defaults_parse_to_the_intended_configuration() {
    assert_eq!(parse(&settings().values), intended_defaults());
}

/// Unset variables (an old settings file) are empty, as in systemd.
#[test]
fn missing_settings_parse_to_stallds_defaults_under_systemd() {
    let config = parse(&BTreeMap::new());
    assert_eq!(
        config,
        Config {
            systemd: true,
            ..Config::default_for(NR_CPUS)
        }
    );
}

#[test]
fn every_example_parses_to_what_its_comment_says() {
    let settings = settings();
    let defaults = intended_defaults();
    for (name, example) in &settings.examples {
        let mut env = settings.values.clone();
        env.insert(name.clone(), example.clone());
        let got = parse(&env);
        let mut want = defaults.clone();
        match name.as_str() {
            "CLIST" => want.monitored_cpus = CpuSet::parse("1,2,5", NR_CPUS).unwrap(),
            "AGGR" => want.threading_mode = ThreadingMode::Aggressive,
            "BP" => want.boost_period_ns = 1_000_000_000,
            "BR" => want.boost_runtime_ns = 20_000,
            "BD" => want.boost_duration = Duration::from_secs(3),
            "THRESH" => want.starving_threshold = Duration::from_secs(60),
            "LOGGING" => {
                want.log_only = true;
                want.log_kmsg = true;
            }
            "FG" => want.foreground = true,
            "PF" => want.pidfile = Some("/run/stalld/stalld.pid".into()),
            "IT" => {
                assert!(got.ignore_threads.matches(b"ksoftirqd/1"));
                assert!(got.ignore_threads.matches(b"rcu_preempt"));
                assert!(!got.ignore_threads.matches(b"stv_victim"));
                want.ignore_threads = got.ignore_threads.clone();
            }
            "IP" => {
                assert!(got.ignore_processes.matches(b"backupd"));
                assert!(got.ignore_processes.matches(b"rsync"));
                assert!(!got.ignore_processes.matches(b"stv_victim"));
                want.ignore_processes = got.ignore_processes.clone();
            }
            "BE" => want.backend = BackendChoice::Only(BackendKind::SchedDebug),
            other => panic!("an example for {other}, which this test does not know"),
        }
        assert_eq!(got, want, "{name}={example:?}");
        if !["BP", "BR", "BD", "FG", "PF"].contains(&name.as_str()) {
            assert_ne!(got, defaults, "{name}={example:?} changes nothing");
        }
    }
}

/// systemd's own check of the unit (the program path pointed at the built binary, which it
/// requires to exist): no error, no warning.
#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let dir = std::env::temp_dir().join(format!("stalld-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("stalld.service");
    let text = read("stalld.service").replace("/usr/bin/stalld", env!("CARGO_BIN_EXE_stalld"));
    std::fs::write(&unit, text).unwrap();
    let out = match std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIPPED: no systemd-analyze here: {e}");
            return;
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{stderr}");
}
