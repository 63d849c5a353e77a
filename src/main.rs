//! The `defrost` binary: read the config, start logging, run the gateway until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
defrost: a scale-from-zero function gateway

Usage:
  defrost [--config FILE] [--listen ADDR]
  defrost check --config FILE
  defrost --help | --version

Commands:
  check           Validate FILE as the gateway would and print the effective settings
                  (every default filled in) as TOML; exit status 1 if it is refused.

Options:
  --config FILE   TOML config: [gateway] settings, [provider], [[function]] entries.
                  Without it, the OpenFaaS gateway's environment variables are read.
  --listen ADDR   Address to listen on (overrides the config), e.g. 127.0.0.1:8080.
  --watch         Reload the config file when it changes (SIGHUP always reloads it).

Logging: RUST_LOG=info (default), debug for one line per request.
";

struct Args {
    /// `defrost check`: validate the config and print it, do not run.
    check: bool,
    config: Option<PathBuf>,
    listen: Option<String>,
    watch: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        check: false,
        config: None,
        listen: None,
        watch: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or(format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("defrost {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "-c" | "--config" => args.config = Some(PathBuf::from(value()?)),
            "-l" | "--listen" => args.listen = Some(value()?),
            "-w" | "--watch" => args.watch = true,
            "check" if !args.check => args.check = true,
            other => return Err(format!("unknown argument {other:?}; see --help")),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("defrost: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let Some(args) = parse_args()? else {
        return Ok(());
    };
    if args.check {
        let config = args.config.ok_or("check needs --config FILE")?;
        print!(
            "{}",
            defrost::check_config(&config).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let (mut settings, backend) =
        defrost::from_sources(args.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(listen) = args.listen {
        settings.listen = listen
            .parse()
            .map_err(|e| format!("--listen {listen:?}: {e}"))?;
    }
    let provider = backend.provider();
    let gateway = defrost::Gateway::start_with(settings, backend).map_err(|e| {
        provider.shutdown();
        format!("cannot start: {e}")
    })?;
    let served = defrost::serve_until_stopped(&gateway, args.config.as_deref(), args.watch);
    gateway.shutdown();
    served.map_err(|e| e.to_string())
}
