//! `jwtgate`: the command line over the jwtgate library.
//!
//! - `jwtgate serve [--config PATH]` runs the gateway. Without `--config` it
//!   is the first-run default: `./keys`, with development TLS material and a
//!   secret created there when absent. SIGHUP reloads keys and certificate.
//!   `--ready-file PATH` writes the bound addresses there once the
//!   listeners are bound (for whoever started it on port 0).
//! - `jwtgate mint --sub ID --topics a,b --ttl 1h` prints an HS256 token
//!   signed with a secret from the keys directory.
//! - `jwtgate check TOKEN` says offline whether the gateway would accept a
//!   token, and why (not).
//!
//! - `jwtgate status`, `jwtgate sessions [--subject S] [--client-id C]` and
//!   `jwtgate disconnect --client-id C | --subject S [--discard-session]`
//!   ask the running gateway over its admin socket; a table, or `--json`.
//!   A gateway that does not answer, or a socket the caller may not open,
//!   is one line on stderr and exit status 2.
//!
//! `mint` and `check` print their answer only: their log goes to stderr at
//! `warn` unless `-v` (`RUST_LOG` overrides either). Where the log goes
//! and how it looks is [`jwtgate::logging`]'s choice.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use jwtgate::admin::protocol::{Answer, Filter, Request};
use jwtgate::admin::{client, render};
use jwtgate::config::{Config, LogFormat};
use jwtgate::firstrun;
use jwtgate::gateway::Gateway;
use jwtgate::keys::{KeySet, KeyStore};
use jwtgate::logging::{self, Program};
use jwtgate::token::{self, MintClaims, Policy};

/// jemalloc rather than the system allocator: with thousands of mostly
/// idle connections, glibc's malloc kept about 45 KiB resident per
/// connection where jemalloc keeps about 30 (BENCHMARKS.md, idle capacity).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "jwtgate",
    version,
    about = "Offline, JWT-only MQTT edge gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: `auto` (native journal entries when stderr is the
    /// journal, else text lines), `text` (lines, even to the journal), or
    /// `json` (one object per line). For `serve`, overrides the config's
    /// `[log] format`.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (TLS only).
    #[command(
        after_help = "Examples:\n  jwtgate serve                          # first run: ./keys, dev certificates\n  jwtgate serve --config /etc/jwtgate/jwtgate.toml\n  jwtgate serve --config jwtgate.toml --listen 127.0.0.1:0 --ready-file ready\n                                         # then: grep ^mqtt= ready"
    )]
    Serve {
        /// Config file (TOML). Without it, the first-run default is used.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Listen on this address instead of the config's `listen`.
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<std::net::SocketAddr>,
        /// Once the MQTT listener (and the metrics listener, when
        /// `[metrics] listen` is set) is bound, write the bound addresses
        /// to this file, one a line: `mqtt=127.0.0.1:40123`, then
        /// `metrics=127.0.0.1:40124` when metrics are on, `websocket=...`
        /// likewise, and `admin=PATH` for the admin socket. Written to a
        /// temporary file next to it and renamed into place, so it never
        /// holds half of that; an existing file is removed at start. With
        /// port 0 (`--listen 127.0.0.1:0`), this is how to learn the port.
        #[arg(long, value_name = "PATH")]
        ready_file: Option<PathBuf>,
    },
    /// Check a token against the keys directory, offline: would the gateway
    /// accept it, with which key, for whom, until when, granting what?
    /// Exit status 0 only when it would be accepted.
    #[command(
        after_help = "Examples:\n  jwtgate check \"$TOKEN\"\n  jwtgate check --config /etc/jwtgate/jwtgate.toml --json - < device.jwt"
    )]
    Check {
        /// The token, or `-` to read it from standard input.
        token: String,
        /// Config file, for its keys directory and token policy.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Keys directory (default: the config's, else ./keys).
        #[arg(long, value_name = "DIR")]
        keys_dir: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Check for a CONNECT with this client id (default: the one the
        /// token is bound to: its `clientid` claim, else its `sub`).
        #[arg(long, value_name = "ID")]
        client_id: Option<String>,
        /// Check as over a connection that presented this client
        /// certificate (PEM, leaf first): for tokens bound to one
        /// (`cnf.x5t#S256`, RFC 8705).
        #[arg(long, value_name = "FILE")]
        client_cert: Option<PathBuf>,
        /// Log what is done (keys loaded) on stderr, not only warnings.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Ask the running gateway how it is: listeners, connections, sessions,
    /// message rates, memory, keys, bridges, storage, last reload.
    #[command(after_help = "Examples:\n  jwtgate status\n  jwtgate status --json | jq .bridges")]
    Status {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List live and parked sessions.
    #[command(
        after_help = "Examples:\n  jwtgate sessions\n  jwtgate sessions --subject thermostat-3 --json"
    )]
    Sessions {
        /// Only this token subject's.
        #[arg(long, value_name = "SUB")]
        subject: Option<String>,
        /// Only this client id's.
        #[arg(long, value_name = "ID")]
        client_id: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// End matching connections now (MQTT 5 clients get DISCONNECT 0x98,
    /// administrative action). The device may connect again; to keep it
    /// out, add its token to the deny list (keys/revoked).
    #[command(
        after_help = "Examples:\n  jwtgate disconnect --client-id thermostat-3\n  jwtgate disconnect --subject thermostat-3 --discard-session"
    )]
    Disconnect {
        /// The client id to end.
        #[arg(long, value_name = "ID", required_unless_present = "subject")]
        client_id: Option<String>,
        /// Every session of this token subject (with --client-id: only
        /// that one).
        #[arg(long, value_name = "SUB")]
        subject: Option<String>,
        /// Also discard the sessions (subscriptions, queued messages),
        /// parked ones included, instead of parking them.
        #[arg(long)]
        discard_session: bool,
        #[command(flatten)]
        target: AdminTarget,
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
        /// Bind the token to this client certificate (PEM, leaf first):
        /// its `cnf.x5t#S256`, so that the gateway accepts it only over a
        /// connection presenting that certificate (RFC 8705).
        #[arg(long, value_name = "FILE")]
        bind_cert: Option<PathBuf>,
        /// Log what is done (keys loaded) on stderr, not only warnings.
        #[arg(short, long)]
        verbose: bool,
    },
}

/// Where the admin commands find the gateway.
#[derive(clap::Args)]
struct AdminTarget {
    /// The gateway's admin socket (default: the config's `[admin] socket`
    /// with `--config`, else ./state/admin.sock if there, else
    /// /run/jwtgate/admin.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Config file, for its `[admin] socket`.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print the gateway's answer as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    let result = match cli.command {
        Command::Check {
            token,
            config,
            keys_dir,
            json,
            client_id,
            client_cert,
            verbose,
        } => {
            init_tool_logging(log_format, verbose);
            return check(
                &token,
                config,
                keys_dir,
                json,
                client_id.as_deref(),
                client_cert.as_deref(),
            );
        }
        Command::Serve {
            config,
            listen,
            ready_file,
        } => serve(config, listen, ready_file.as_deref(), log_format),
        Command::Status { target } => {
            init_tool_logging(log_format, false);
            return admin_command(&target, Request::Status);
        }
        Command::Sessions {
            subject,
            client_id,
            target,
        } => {
            init_tool_logging(log_format, false);
            let filter = Filter { subject, client_id };
            return admin_command(&target, Request::Sessions { filter });
        }
        Command::Disconnect {
            client_id,
            subject,
            discard_session,
            target,
        } => {
            init_tool_logging(log_format, false);
            let filter = Filter { subject, client_id };
            return admin_command(
                &target,
                Request::Disconnect {
                    filter,
                    discard_session,
                },
            );
        }
        Command::Mint {
            sub,
            topics,
            ttl,
            keys_dir,
            config,
            kid,
            bind_cert,
            verbose,
        } => {
            init_tool_logging(log_format, verbose);
            mint(
                sub,
                topics,
                &ttl,
                keys_dir,
                config,
                kid,
                bind_cert.as_deref(),
            )
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("jwtgate: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Asks the gateway and prints its answer. Exit status 2 when it could
/// not be asked, or refused.
fn admin_command(target: &AdminTarget, request: Request) -> ExitCode {
    let asked = target
        .config
        .as_deref()
        .map(Config::load)
        .transpose()
        .map_err(|e| e.to_string())
        .and_then(|config| {
            let socket =
                client::socket_path(target.socket.as_deref(), config.as_ref().map(|c| &c.admin))
                    .map_err(|e| e.to_string())?;
            client::ask(&socket, &request).map_err(|e| e.to_string())
        });
    let answer = match asked {
        Ok(answer) => answer,
        Err(message) => {
            eprintln!("jwtgate: {message}");
            return ExitCode::from(2);
        }
    };
    let text = match (&answer, target.json) {
        (Answer::Status(status), false) => render::status(status),
        (Answer::Sessions(rows), false) => render::sessions(rows),
        (Answer::Disconnected(done), false) => render::disconnected(done),
        (Answer::Status(status), true) => json(status),
        (Answer::Sessions(rows), true) => json(rows),
        (Answer::Disconnected(done), true) => json(done),
        (Answer::Error(why), _) => {
            eprintln!("jwtgate: the gateway refused: {why}");
            return ExitCode::from(2);
        }
    };
    // A reader that stopped early (`| head`) wanted no more.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

/// `--json`: the answer's object, as the gateway sent it, pretty.
fn json(value: &impl serde::Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// `mint` and `check` answer on stdout; their log is for trouble
/// (warnings and errors) unless `-v`. `RUST_LOG` overrides either.
fn init_tool_logging(flag: Option<LogFormat>, verbose: bool) {
    logging::init(&logging::Options {
        flag,
        config: LogFormat::default(),
        default_filter: if verbose { "info" } else { "warn" },
        program: Program::Tool,
    });
}

fn serve(
    config_path: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    ready_file: Option<&Path>,
    log_format: Option<LogFormat>,
) -> Result<(), String> {
    // The config says how to log, so it is read first; its errors go to
    // stderr as they are.
    let loaded = config_path.as_ref().map(|path| Config::load(path));
    let config_format = match &loaded {
        Some(Ok(config)) => config.log.format,
        _ => LogFormat::default(),
    };
    logging::init(&logging::Options {
        flag: log_format,
        config: config_format,
        default_filter: "info,rumqttd=warn",
        program: Program::Gateway,
    });
    let mut config = match loaded {
        Some(loaded) => loaded.map_err(|e| e.to_string())?,
        None => first_run_config()?,
    };
    if let Some(listen) = listen {
        config.listen = listen;
    }
    // A file left by an earlier run must not say "ready" for this one.
    if let Some(path) = ready_file {
        remove_stale_ready_file(path)?;
    }
    let runtime = gateway_runtime().map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async {
        let gateway = Gateway::bind(&config).await.map_err(|e| e.to_string())?;
        let addr = gateway.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%addr, "jwtgate listening (TLS only)");
        if config_path.is_none() {
            print_first_run_help(&config, addr.port());
        }
        tokio::spawn(reload_on_sighup(gateway.reloader()));
        if std::env::var_os("JWTGATE_TEST_HOOKS").is_some_and(|v| v == "1") {
            tokio::spawn(wedge_on_sigusr2(gateway.broker()));
        }
        // The listener is bound and keys, certificate and state are loaded:
        // a TLS connection made now is served.
        if let Some(path) = ready_file {
            let lines = [
                ("mqtt", Some(addr.to_string())),
                ("metrics", gateway.metrics_addr().map(|a| a.to_string())),
                ("websocket", gateway.websocket_addr().map(|a| a.to_string())),
                (
                    "admin",
                    gateway.admin_socket().map(|p| p.display().to_string()),
                ),
            ];
            write_ready_file(path, &lines)?;
        }
        if let Err(e) = jwtgate::readiness::notify("READY=1") {
            tracing::warn!(error = %e, "could not notify systemd of readiness");
        }
        tokio::spawn(jwtgate::readiness::supervise(gateway.health()));
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

/// The gateway's tokio runtime: a worker for every core but one (and at
/// least one), unless `TOKIO_WORKER_THREADS` sets the number.
///
/// A delivery's CPU is mostly the kernel's (the TCP send, and on loopback
/// the receiver's side of it, in the sender's softirq), and the storage
/// thread and everything else on the box want a core too. With a worker on
/// every core, each published message woke the other worker to steal half
/// of its subscribers' tasks: at a steady 50,000 deliveries/s on two cores
/// that was 10 to 20 wake-ups of a sleeping worker per message (eventfd and
/// futex), both cores busy at once, and the load generator's threads
/// preempting the workers after their sends; one worker on two cores took
/// 20 % less CPU per delivery and a fifth of the context switches (see
/// `benches/compare.sh`, scenario `fanout-rate`).
fn gateway_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // tokio reads the variable itself when no number is set here.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    builder.build()
}

/// Removes `--ready-file`'s file if an earlier run left it.
fn remove_stale_ready_file(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!(
            "--ready-file: removing the old {}: {e}",
            path.display()
        )),
    }
}

/// Writes the bound addresses to `path` (`mqtt=ADDR`, then `metrics=ADDR`
/// and `websocket=ADDR` for the listeners that are on, and `admin=PATH`
/// for the admin socket), through
/// `.NAME.tmp` next to it renamed into place: a reader sees no file or the
/// whole of it.
fn write_ready_file(path: &Path, lines: &[(&str, Option<String>)]) -> Result<(), String> {
    let text: String = lines
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|value| format!("{name}={value}\n")))
        .collect();
    let name = path
        .file_name()
        .ok_or_else(|| format!("--ready-file {}: not a file name", path.display()))?;
    let mut scratch_name = std::ffi::OsString::from(".");
    scratch_name.push(name);
    scratch_name.push(".tmp");
    let scratch = path.with_file_name(scratch_name);
    std::fs::write(&scratch, text)
        .map_err(|e| format!("--ready-file: writing {}: {e}", scratch.display()))?;
    std::fs::rename(&scratch, path).map_err(|e| {
        format!(
            "--ready-file: renaming {} to {}: {e}",
            scratch.display(),
            path.display()
        )
    })?;
    tracing::info!(path = %path.display(), "ready file written");
    Ok(())
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

/// Reloads keys and certificate on every SIGHUP (`systemctl reload`).
async fn reload_on_sighup(reloader: std::sync::Arc<jwtgate::reload::Reloader>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading keys and certificate");
        let _ = jwtgate::readiness::reloading();
        let reloader = std::sync::Arc::clone(&reloader);
        if let Err(e) = tokio::task::spawn_blocking(move || reloader.reload()).await {
            tracing::error!(error = %e, "reload failed");
        }
        let _ = jwtgate::readiness::notify("READY=1");
    }
}

/// Test hook (`JWTGATE_TEST_HOOKS=1` only): SIGUSR2 wedges the routing
/// core, so a test can see the watchdog pings stop.
async fn wedge_on_sigusr2(broker: std::sync::Arc<jwtgate::broker::Broker>) {
    let Ok(mut signal) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
    else {
        return;
    };
    if signal.recv().await.is_some() {
        tracing::warn!("test hook: wedging the routing core");
        broker.wedge_for_tests();
    }
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

/// The config (the given file, or the built-in defaults) and the key set of
/// its keys directory, or of `keys_dir` when given.
fn config_and_keys(
    config_path: Option<PathBuf>,
    keys_dir: Option<PathBuf>,
) -> Result<(Config, Arc<KeySet>), String> {
    let mut config = match &config_path {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::defaults(&std::env::current_dir().map_err(|e| e.to_string())?),
    };
    if let Some(dir) = keys_dir {
        config.auth.keys_dir = dir;
    }
    let (store, report) = KeyStore::open(&config.auth.keys_dir).map_err(|e| e.to_string())?;
    report.log();
    Ok((config, store.snapshot()))
}

fn check(
    token: &str,
    config_path: Option<PathBuf>,
    keys_dir: Option<PathBuf>,
    json: bool,
    client_id: Option<&str>,
    client_cert: Option<&Path>,
) -> ExitCode {
    let token = if token == "-" {
        let mut text = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut text) {
            eprintln!("jwtgate: reading the token from stdin: {e}");
            return ExitCode::from(2);
        }
        text
    } else {
        token.to_owned()
    };
    let (config, keys) = match config_and_keys(config_path, keys_dir) {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("jwtgate: {message}");
            return ExitCode::from(2);
        }
    };
    let certificate = match client_cert.map(thumbprint_of).transpose() {
        Ok(certificate) => certificate,
        Err(message) => {
            eprintln!("jwtgate: --client-cert: {message}");
            return ExitCode::from(2);
        }
    };
    let policy = Policy::from_config(&config.auth);
    let report =
        jwtgate::check::check_with(&token, &keys, &policy, client_id, certificate.as_deref());
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("jwtgate: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{report}");
    }
    if report.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn mint(
    sub: String,
    topics: Vec<String>,
    ttl: &str,
    keys_dir: Option<PathBuf>,
    config_path: Option<PathBuf>,
    kid: Option<String>,
    bind_cert: Option<&Path>,
) -> Result<(), String> {
    let ttl = token::parse_ttl(ttl).map_err(|e| format!("--ttl: {e}"))?;
    let certificate = bind_cert
        .map(thumbprint_of)
        .transpose()
        .map_err(|e| format!("--bind-cert: {e}"))?;
    let (config, keys) = config_and_keys(config_path, keys_dir)?;
    let keys_dir = &config.auth.keys_dir;
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
    let token =
        token::mint_bound(key, &claims, certificate.as_deref()).map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(())
}

/// The RFC 8705 thumbprint of the first (leaf) certificate in a PEM file.
fn thumbprint_of(path: &Path) -> Result<String, String> {
    let certs = jwtgate::tls::read_certificates(path).map_err(|e| e.to_string())?;
    let leaf = certs
        .first()
        .ok_or_else(|| format!("{} holds no certificate", path.display()))?;
    Ok(jwtgate::tls::Thumbprint::of(leaf).to_string())
}
