//! `fulcrum`: the command line over the library.
//!
//! Pingora's flags (`-c FILE`, `-t`, `-d`, `-u`) plus `--demo`. Exit codes: 0 success, 1 invalid
//! configuration or a failure to start, 2 bad usage.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::ExitCode;

use fulcrum::config::LoadBalancerConfig;
use fulcrum::LoadBalancer;
use pingora::server::configuration::Opt;

const USAGE: &str = "\
Usage: fulcrum -c FILE [-t] [-d] [-u]
       fulcrum --demo

  -c, --conf FILE  run with the YAML configuration FILE
  -t, --test       validate the configuration and exit (0 = valid)
  -d, --daemon     run in the background (pid_file from the pingora section)
  -u, --upgrade    take over the listening sockets of a running Fulcrum (zero-downtime upgrade)
      --demo       start three demo backends and Fulcrum in front of them on 127.0.0.1:8080
  -h, --help       show this help
  -V, --version    show the version

Every scalar setting can be overridden with LB_<KEY>, e.g. LB_PORT=8081 LB_STRATEGY=random.";

/// What the command line asks for.
#[derive(Debug, Default, PartialEq)]
struct Args {
    conf: Option<PathBuf>,
    test: bool,
    daemon: bool,
    upgrade: bool,
    demo: bool,
    help: bool,
    version: bool,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut out = Args::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--conf" => {
                let file = args
                    .next()
                    .ok_or_else(|| format!("{arg} needs a file name"))?;
                out.conf = Some(file.into());
            }
            s if s.starts_with("--conf=") => out.conf = Some(s["--conf=".len()..].into()),
            "-t" | "--test" => out.test = true,
            "-d" | "--daemon" => out.daemon = true,
            "-u" | "--upgrade" => out.upgrade = true,
            "--demo" => out.demo = true,
            "-h" | "--help" => out.help = true,
            "-V" | "--version" => out.version = true,
            // combined short flags such as -tc FILE are not supported; say so clearly
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(out)
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fulcrum: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.help {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.version {
        println!("fulcrum {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if args.demo {
        if args.conf.is_some() || args.test || args.daemon || args.upgrade {
            eprintln!("fulcrum: --demo takes no other flag\n\n{USAGE}");
            return ExitCode::from(2);
        }
        init_logging();
        return match fulcrum::demo::run_demo() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fulcrum: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(path) = args.conf.clone() else {
        eprintln!("fulcrum: no configuration given (use -c FILE, or --demo)\n\n{USAGE}");
        return ExitCode::from(2);
    };
    let config = match LoadBalancerConfig::from_file(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fulcrum: configuration {} is invalid:", path.display());
            for msg in e.messages() {
                eprintln!("  - {msg}");
            }
            return ExitCode::FAILURE;
        }
    };
    if args.test {
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
    match LoadBalancer::new(config).and_then(|lb| lb.run(Some(opt))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fulcrum: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_flags() {
        let cases: &[(&[&str], Args)] = &[
            (&[], Args::default()),
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
                    conf: Some("a.yaml".into()),
                    test: true,
                    ..Args::default()
                },
            ),
            (
                &["--conf=b.yaml", "-d", "-u"],
                Args {
                    conf: Some("b.yaml".into()),
                    daemon: true,
                    upgrade: true,
                    ..Args::default()
                },
            ),
            (
                &["--help"],
                Args {
                    help: true,
                    ..Args::default()
                },
            ),
        ];
        for (argv, want) in cases {
            assert_eq!(&parse(argv).unwrap(), want, "{argv:?}");
        }
        assert!(parse(&["-c"]).unwrap_err().contains("needs a file"));
        assert!(parse(&["-x"])
            .unwrap_err()
            .contains("unknown argument \"-x\""));
    }
}
