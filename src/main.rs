//! `fulcrum`: the command line over the library.
//!
//! Pingora's flags (`-c FILE`, `-t`, `-d`, `-u`) plus `--demo`, parsed by clap (derive). Exit
//! codes: 0 success (also `-h`, `-V`), 1 invalid configuration or a failure to start, 2 bad usage.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, CommandFactory, Parser};
use fulcrum::config::LoadBalancerConfig;
use fulcrum::settings::Settings;
use fulcrum::LoadBalancer;
use pingora::server::configuration::Opt;

/// What the command line asks for. clap answers `-h`/`-V` (exit 0) and usage errors (exit 2).
#[derive(Debug, Default, PartialEq, Parser)]
#[command(
    name = "fulcrum",
    version,
    about = "Fulcrum, an HTTP load balancer on Cloudflare Pingora",
    override_usage = "fulcrum -c FILE [-t] [-d] [-u]\n       fulcrum --demo",
    after_help = "Every setting except pingora and backends can be overridden with LB_<KEY>, \
                  e.g. LB_PORT=8081 LB_STRATEGY=random.",
    group(ArgGroup::new("mode").required(true).args(["conf", "demo"]))
)]
struct Args {
    /// Run with the YAML configuration FILE
    #[arg(short = 'c', long = "conf", value_name = "FILE")]
    conf: Option<PathBuf>,
    /// Validate the configuration and exit (0 = valid)
    #[arg(short, long, requires = "conf")]
    test: bool,
    /// Run in the background (pid_file from the pingora section)
    #[arg(short, long, requires = "conf")]
    daemon: bool,
    /// Take over the listening sockets of a running Fulcrum (zero-downtime upgrade)
    #[arg(short, long, requires = "conf")]
    upgrade: bool,
    /// Start three demo backends and Fulcrum in front of them on 127.0.0.1:8080
    #[arg(long, conflicts_with_all = ["conf", "test", "daemon", "upgrade"])]
    demo: bool,
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // Help and version go to stdout with 0, usage errors to stderr with 2, always
            // with the usage (clap leaves it out of some errors, such as `-c` without FILE).
            let _ = e.print();
            if e.use_stderr() && !e.render().to_string().contains("Usage:") {
                eprintln!("\n{}", Args::command().render_usage());
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    if args.demo {
        init_logging();
        return match fulcrum::demo::run_demo() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fulcrum: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(path) = args.conf else {
        // Not reachable: clap requires -c or --demo.
        return ExitCode::from(2);
    };
    let config = match LoadBalancerConfig::from_file(&path) {
        Ok(c) => c,
        Err(e) => return invalid(&path, &e),
    };
    if args.test {
        // The same checks a start makes: semantics, DNS for every backend, pingora section,
        // admin token.
        if let Err(e) = Settings::try_from(&config) {
            return invalid(&path, &e);
        }
        println!(
            "fulcrum: configuration {} is valid ({} backends, strategy {})",
            path.display(),
            config.backends.len(),
            config.strategy
        );
        return ExitCode::SUCCESS;
    }
    init_logging();
    let opt = Opt {
        upgrade: args.upgrade,
        daemon: args.daemon,
        ..Opt::default()
    };
    // Absolute, so that reloads still find it after daemon mode changes the working directory.
    let file = std::fs::canonicalize(&path).unwrap_or(path);
    let started = LoadBalancer::new(config)
        .and_then(|lb| lb.reloading_from(file).exit_when_drained().run(Some(opt)));
    match started {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fulcrum: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reports an invalid configuration, one problem a line, and gives exit code 1.
fn invalid(path: &std::path::Path, e: &fulcrum::config::ConfigError) -> ExitCode {
    eprintln!("fulcrum: configuration {} is invalid:", path.display());
    for msg in e.messages() {
        eprintln!("  - {msg}");
    }
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Args, ErrorKind> {
        Args::try_parse_from(std::iter::once("fulcrum").chain(args.iter().copied()))
            .map_err(|e| e.kind())
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn parses_flags() {
        let conf = |f: &str| Some(PathBuf::from(f));
        let cases: &[(&[&str], Args)] = &[
            (
                &["--demo"],
                Args {
                    demo: true,
                    ..Args::default()
                },
            ),
            (
                &["-c", "a.yaml", "-t"],
                Args {
                    conf: conf("a.yaml"),
                    test: true,
                    ..Args::default()
                },
            ),
            (
                &["--conf=b.yaml", "-d", "-u"],
                Args {
                    conf: conf("b.yaml"),
                    daemon: true,
                    upgrade: true,
                    ..Args::default()
                },
            ),
            (
                &["-tc", "c.yaml"],
                Args {
                    conf: conf("c.yaml"),
                    test: true,
                    ..Args::default()
                },
            ),
        ];
        for (argv, want) in cases {
            assert_eq!(&parse(argv).unwrap(), want, "{argv:?}");
        }
    }

    #[test]
    fn usage_errors_and_help_have_their_kinds() {
        let cases: &[(&[&str], ErrorKind)] = &[
            (&[], ErrorKind::MissingRequiredArgument),
            (&["-t"], ErrorKind::MissingRequiredArgument),
            (&["-c"], ErrorKind::InvalidValue),
            (&["-x"], ErrorKind::UnknownArgument),
            (&["--demo", "-c", "a.yaml"], ErrorKind::ArgumentConflict),
            (&["--demo", "-t"], ErrorKind::ArgumentConflict),
            (&["--help"], ErrorKind::DisplayHelp),
            (&["-V"], ErrorKind::DisplayVersion),
        ];
        for (argv, want) in cases {
            assert_eq!(parse(argv).unwrap_err(), *want, "{argv:?}");
        }
    }
}
