//! `stalld`: parse the command line, run the daemon, exit with its code.

use stalld::cli::{self, Command, USAGE_EXIT_CODE};
use stalld::sys::process;

fn main() {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.next_if(|arg| arg == "throttlectl").is_some() {
        let args: Vec<String> = args.map(|arg| arg.to_string_lossy().into_owned()).collect();
        std::process::exit(stalld::throttlectl::main(&args));
    }
    let code = match cli::parse(args, process::configured_cpus()) {
        Ok(Command::Run(config)) => {
            if let Err(e) = process::survive_initrd_switch() {
                eprintln!("stalld: {e}");
            }
            stalld::daemon::run(config)
        }
        Ok(Command::Help) => {
            print!("{}", cli::usage());
            0
        }
        Ok(Command::Version) => {
            println!("{}", cli::version());
            0
        }
        Ok(Command::DumpRing(path)) => {
            match stalld::log::ring::dump(&path, &mut std::io::stdout().lock()) {
                Ok(_) => 0,
                Err(e) => {
                    eprintln!("stalld: {e}");
                    1
                }
            }
        }
        Ok(Command::Selftest { cpu, config }) => {
            stalld::selftest::run(cpu, &config, &mut std::io::stdout().lock())
        }
        Err(e) => {
            eprintln!("stalld: {e}");
            USAGE_EXIT_CODE
        }
    };
    std::process::exit(code);
}
