//! `jwtgate`: the command line over the jwtgate library.
//!
//! - `jwtgate serve [--config PATH]` runs the gateway. Without `--config` it
//!   is the first-run default: `./keys`, with development TLS material and a
//!   secret created there when absent.
//! - `jwtgate mint --sub ID --topics a,b --ttl 1h` prints an HS256 token
//!   signed with a secret from the keys directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jwtgate::config::Config;
use jwtgate::firstrun;
use jwtgate::gateway::Gateway;
use jwtgate::keys::KeyStore;
use jwtgate::token::{self, MintClaims};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "jwtgate",
    version,
    about = "Offline, JWT-only MQTT edge gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (TLS only).
    #[command(
        after_help = "Examples:\n  jwtgate serve                          # first run: ./keys, dev certificates\n  jwtgate serve --config /etc/jwtgate/jwtgate.toml"
    )]
    Serve {
        /// Config file (TOML). Without it, the first-run default is used.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Listen on this address instead of the config's `listen`.
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Print an HS256 token signed with a secret from the keys directory.
    #[command(
        after_help = "Example:\n  TOKEN=$(jwtgate mint --sub thermostat-1a --topics temperature,config --ttl 1h)"
    )]
    Mint {
        /// The token's subject (the device).
        #[arg(long, value_name = "ID")]
        sub: String,
        /// Granted topic filters, comma-separated.
        #[arg(long, value_name = "a,b", value_delimiter = ',', required = true)]
        topics: Vec<String>,
        /// Lifetime: seconds, or with a unit (90s, 30m, 1h, 7d).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Keys directory (default: the config's, else ./keys).
        #[arg(long, value_name = "DIR")]
        keys_dir: Option<PathBuf>,
        /// Config file, for its keys directory and topics claim name.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Sign with this key id (default: the newest *.b64 secret).
        #[arg(long)]
        kid: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,rumqttd=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve { config, listen } => serve(config, listen),
        Command::Mint {
            sub,
            topics,
            ttl,
            keys_dir,
            config,
            kid,
        } => mint(sub, topics, &ttl, keys_dir, config, kid),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("jwtgate: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config_path: Option<PathBuf>, listen: Option<std::net::SocketAddr>) -> Result<(), String> {
    let mut config = match &config_path {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => first_run_config()?,
    };
    if let Some(listen) = listen {
        config.listen = listen;
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async {
        let gateway = Gateway::bind(&config).await.map_err(|e| e.to_string())?;
        let addr = gateway.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%addr, "jwtgate listening (TLS only)");
        if config_path.is_none() {
            print_first_run_help(&config, addr.port());
        }
        if let Err(e) = jwtgate::readiness::notify("READY=1") {
            tracing::warn!(error = %e, "could not notify systemd of readiness");
        }
        gateway
            .run(async {
                shutdown_signal().await;
                let _ = jwtgate::readiness::notify("STOPPING=1");
            })
            .await;
        tracing::info!("jwtgate stopped");
        Ok(())
    })
}

/// The built-in config for `jwtgate serve` without `--config`, with the
/// development material it needs created if absent.
fn first_run_config() -> Result<Config, String> {
    let here = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    let config = Config::defaults(&here);
    let material =
        firstrun::ensure_dev_material(&config.auth.keys_dir).map_err(|e| e.to_string())?;
    if !material.created.is_empty() {
        eprintln!();
        eprintln!("  *** jwtgate first run: created DEVELOPMENT key material ***");
        for path in &material.created {
            eprintln!("      {}", display_relative(path, &here));
        }
        eprintln!("  Do not use these in production: use `jwtgate serve --config FILE`.");
    }
    Ok(config)
}

fn print_first_run_help(config: &Config, port: u16) {
    let here = std::env::current_dir().unwrap_or_default();
    let ca = display_relative(&config.auth.keys_dir.join("tls/ca.crt"), &here);
    eprintln!();
    eprintln!("  jwtgate is running with the first-run default (keys in ./keys).");
    eprintln!("  Mint a token and connect:");
    eprintln!("    TOKEN=$(cargo run --release -- mint --sub dev1 --topics 'sensors/#' --ttl 1h)");
    eprintln!(
        "    mosquitto_sub -h localhost -p {port} --cafile {ca} -u JWT -P \"$TOKEN\" -t 'sensors/#' -v"
    );
    eprintln!(
        "    mosquitto_pub -h localhost -p {port} --cafile {ca} -u JWT -P \"$TOKEN\" -t sensors/t1 -m 21.5"
    );
    eprintln!();
}

fn display_relative(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
    }
}

fn mint(
    sub: String,
    topics: Vec<String>,
    ttl: &str,
    keys_dir: Option<PathBuf>,
    config_path: Option<PathBuf>,
    kid: Option<String>,
) -> Result<(), String> {
    let config = match &config_path {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::defaults(&std::env::current_dir().map_err(|e| e.to_string())?),
    };
    let keys_dir = keys_dir.unwrap_or(config.auth.keys_dir);
    let ttl = token::parse_ttl(ttl).map_err(|e| format!("--ttl: {e}"))?;
    let (store, report) = KeyStore::open(&keys_dir).map_err(|e| e.to_string())?;
    report.log();
    let keys = store.snapshot();
    let key = match &kid {
        Some(kid) => keys
            .get(kid)
            .ok_or_else(|| format!("no key with id {kid:?} in {}", keys_dir.display()))?,
        None => keys.newest_hmac().ok_or_else(|| {
            format!(
                "no HMAC secret (*.b64) in {}; run `jwtgate serve` once to create one",
                keys_dir.display()
            )
        })?,
    };
    let claims = MintClaims {
        subject: sub,
        topics,
        ttl,
        topics_claim: config.auth.topics_claim,
        issuer: config.auth.issuer,
        audience: config.auth.audience.unwrap_or_default(),
    };
    let token = token::mint(key, &claims).map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(())
}
