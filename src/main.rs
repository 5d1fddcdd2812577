//! The `messaging` binary: `serve`, `migrate up | down [N] | status`, or
//! `client ...` (the terminal client, `messaging::client`).
//! Everything else lives in the library; this file turns arguments into one
//! call and a failure into one line on stderr and a non-zero exit, and owns
//! what belongs to the process: signals and the panic hook.

use std::net::TcpListener;
use std::process::ExitCode;

use crossbeam_channel::Receiver;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use messaging::config::Config;
use messaging::log::Log;
use messaging::{client, migrate, server, watch};

const USAGE: &str = "usage: messaging serve | messaging migrate up | down [N] | status | messaging client ...";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = match args.as_slice() {
        ["serve"] => serve(),
        ["migrate", rest @ ..] => run_migrate(rest),
        ["client", rest @ ..] => client::run(rest),
        _ => Err(USAGE.to_string()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("messaging: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> Result<(), String> {
    let mut config = Config::from_env().map_err(|problems| problems.join("\nmessaging: "))?;
    let log = Log::new(config.log);
    fit_websockets_in_memory_mappings(&mut config, log);
    let (was, limit) = raise_open_files_limit()?;
    log.info("open files limit", &[("limit", &limit), ("was", &was), ("needed", &config.descriptors_needed())]);
    config.check_descriptors(limit)?;
    let http = TcpListener::bind(&config.http_addr)
        .map_err(|e| format!("cannot listen on HTTP_ADDR {}: {e}", config.http_addr))?;
    let ws =
        TcpListener::bind(&config.ws_addr).map_err(|e| format!("cannot listen on WS_ADDR {}: {e}", config.ws_addr))?;
    log_panics(log);
    let stop = stop_on_signals(log)?;
    let running = server::start(config, http, ws)?;
    let (http, ws) = (format!("http://{}", running.http_addr()), format!("ws://{}/ws", running.ws_addr()));
    log.info("serving", &[("http", &http), ("ws", &ws)]);
    let stopped = running.wait(&stop);
    match &stopped {
        Ok(()) => log.info("stopped", &[]),
        Err(cause) => log.error("stopping", &[("cause", cause)]),
    }
    stopped
}

/// Lowers `WS_MAX_CONNECTIONS` to what the kernel's limit on memory mappings
/// allows, saying so: each WebSocket's two threads take mappings, and a
/// process out of them cannot start a thread or get memory, and aborts.
/// Lowering beats refusing to start, since the default (10,000) is above what
/// Linux's default `vm.max_map_count` (65,530) fits.
fn fit_websockets_in_memory_mappings(config: &mut Config, log: Log) {
    let Some(max_map_count) =
        std::fs::read_to_string("/proc/sys/vm/max_map_count").ok().and_then(|text| text.trim().parse::<u64>().ok())
    else {
        return;
    };
    let fit = config.websockets_within(max_map_count).max(1);
    if config.ws_max_connections > fit {
        let fields: [(&str, &dyn std::fmt::Display); 3] =
            [("was", &config.ws_max_connections), ("now", &fit), ("max_map_count", &max_map_count)];
        log.warn("WS_MAX_CONNECTIONS lowered to fit vm.max_map_count; raise it (sysctl) to allow more", &fields);
        config.ws_max_connections = fit;
    }
}

/// Raises the soft limit on open files to the hard limit (a soft limit of
/// 1024 is common, and every socket is a descriptor); returns the soft limit
/// before and after. When raising fails, the old limit stays and the start-up
/// check decides whether it is enough.
fn raise_open_files_limit() -> Result<(u64, u64), String> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live one.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(format!("cannot read the open files limit: {}", std::io::Error::last_os_error()));
    }
    let was = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads one `rlimit` through a pointer to a live one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    #[allow(clippy::unnecessary_cast)] // `rlim_t` is `u64` on Linux, not everywhere.
    Ok((was as u64, limit.rlim_cur as u64))
}

/// SIGTERM or SIGINT asks for a graceful stop: a message on the returned
/// channel, which `Running::wait` obeys. A second one ends the process at
/// once, as the default action would have.
///
/// A signal handler may only do async-signal-safe work, which is easy to get
/// subtly wrong by hand; signal-hook's handler just writes to a pipe, and the
/// thread started here reads it like any other message.
fn stop_on_signals(log: Log) -> Result<Receiver<()>, String> {
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("cannot handle SIGTERM and SIGINT: {e}"))?;
    let (requested, stop) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                let name = signal_hook::low_level::signal_name(signal).unwrap_or("a signal");
                if stopping {
                    log.warn("stopping at once", &[("signal", &name)]);
                    let _ = signal_hook::low_level::emulate_default_handler(signal);
                    std::process::exit(128 + signal);
                }
                stopping = true;
                log.info("stopping", &[("signal", &name)]);
                let _ = requested.try_send(());
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(stop)
}

/// Panics go to the log as one logfmt line each, like everything else; the
/// request or thread that panicked decides what happens next.
fn log_panics(log: Log) {
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        let at = info.location().map_or_else(String::new, |l| format!("{}:{}", l.file(), l.line()));
        let cause = watch::panic_message(info.payload());
        log.error("panic", &[("thread", &thread), ("at", &at), ("cause", &cause)]);
    }));
}

/// What `migrate` was asked to do, checked before anything connects.
enum MigrateCommand {
    Up,
    Down(usize),
    Status,
}

fn run_migrate(args: &[&str]) -> Result<(), String> {
    let command = match args {
        ["up"] => MigrateCommand::Up,
        ["down"] => MigrateCommand::Down(1),
        ["down", n] => MigrateCommand::Down(n.parse().map_err(|_| USAGE.to_string())?),
        ["status"] => MigrateCommand::Status,
        _ => return Err(USAGE.to_string()),
    };
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set".to_string())?;
    let source = migrate::Source::from_migrations_dir(std::env::var("MIGRATIONS_DIR").ok().as_deref());
    let mut client = migrate::connect(&url)?;
    let report = |none: &str, done: &str, stems: Vec<String>| {
        if stems.is_empty() {
            println!("{none}");
        }
        for stem in stems {
            println!("{done}: {stem}");
        }
    };
    match command {
        MigrateCommand::Up => {
            report("nothing to apply", "applied", migrate::up(&mut client, &source).map_err(|e| e.to_string())?)
        }
        MigrateCommand::Down(n) => report(
            "nothing to roll back",
            "rolled back",
            migrate::down(&mut client, &source, n).map_err(|e| e.to_string())?,
        ),
        MigrateCommand::Status => {
            for (stem, applied) in migrate::status(&mut client, &source).map_err(|e| e.to_string())? {
                println!("{} {stem}", if applied { "applied" } else { "pending" });
            }
        }
    }
    Ok(())
}
