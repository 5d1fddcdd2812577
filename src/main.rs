//! The `messaging` binary: `serve`, or `migrate up | down [N] | status`.
//! Everything else lives in the library; this file turns arguments into one
//! call and a failure into one line on stderr and a non-zero exit.

use std::net::TcpListener;
use std::path::Path;
use std::process::ExitCode;

use messaging::config::Config;
use messaging::{db, migrate, server};

const USAGE: &str = "usage: messaging serve | messaging migrate up | down [N] | status";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = match args.as_slice() {
        ["serve"] => serve(),
        ["migrate", rest @ ..] => run_migrate(rest),
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
    let config = Config::from_env().map_err(|problems| problems.join("\nmessaging: "))?;
    let http = TcpListener::bind(&config.http_addr)
        .map_err(|e| format!("cannot listen on HTTP_ADDR {}: {e}", config.http_addr))?;
    let ws =
        TcpListener::bind(&config.ws_addr).map_err(|e| format!("cannot listen on WS_ADDR {}: {e}", config.ws_addr))?;
    let running = server::start(config, http, ws)?;
    eprintln!(
        "messaging: serving HTTP on http://{} and WebSocket on ws://{}/ws",
        running.http_addr(),
        running.ws_addr()
    );
    running.wait();
    Ok(())
}

fn run_migrate(args: &[&str]) -> Result<(), String> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set".to_string())?;
    let dir = std::env::var("MIGRATIONS_DIR").unwrap_or_else(|_| "sql".into());
    let dir = Path::new(&dir);
    let mut client =
        db::connection_config(&url)?.connect(postgres::NoTls).map_err(|e| format!("cannot connect: {e}"))?;
    let report = |verb: &str, stems: Vec<String>| {
        if stems.is_empty() {
            println!("nothing to {verb}");
        }
        for stem in stems {
            println!("{verb}: {stem}");
        }
    };
    match args {
        ["up"] => report("applied", migrate::up(&mut client, dir).map_err(|e| e.to_string())?),
        ["down"] | ["down", _] => {
            let n = args.get(1).map_or(Ok(1), |n| n.parse::<usize>()).map_err(|_| USAGE.to_string())?;
            report("rolled back", migrate::down(&mut client, dir, n).map_err(|e| e.to_string())?);
        }
        ["status"] => {
            for (stem, applied) in migrate::status(&mut client, dir).map_err(|e| e.to_string())? {
                println!("{} {stem}", if applied { "applied" } else { "pending" });
            }
        }
        _ => return Err(USAGE.to_string()),
    }
    Ok(())
}
