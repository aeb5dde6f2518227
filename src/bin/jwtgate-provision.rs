//! `jwtgate-provision`: device tokens and the provider's signing keys, the
//! command line over [`jwtgate::provision`].
//!
//! - `token` logs a device in (OAuth 2 password grant) and stores its token.
//! - `refresh` renews that token with the stored refresh token.
//! - `jwks` downloads the provider's JWK set into the gateway's keys
//!   directory.
//!
//! Outcomes go to stdout; warnings, retries and errors to stderr (the
//! log at `warn` unless `-v`; `RUST_LOG` overrides either).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use jwtgate::config::LogFormat;
use jwtgate::logging::{self, Program};
use jwtgate::provision::{
    self, Client, Error, Fresh, JwksStored, PasswordGrant, Provider, RefreshFile, Refreshed,
    RenewWhen, SecretReader, SecretSource, Stored, TokenKind, TokenOut, Verify,
};
use jwtgate::token::parse_ttl;

const EXAMPLES: &str = "\
Examples:
  # on the gateway: the provider's signing keys, for RS256/ES256 tokens
  jwtgate-provision jwks --domain https://tenant.eu.auth0.com --out /etc/jwtgate/keys/auth0.json
  # on the device: log in once, then keep the token fresh from a timer
  jwtgate-provision token --domain https://tenant.eu.auth0.com --client-id ID \\
      --username thermostat-1a --password-file - --scope 'openid offline_access' --out device.jwt
  jwtgate-provision refresh --domain https://tenant.eu.auth0.com --client-id ID \\
      --out device.jwt";

const TOKEN_EXAMPLE: &str = "\
Example:
  jwtgate-provision token --domain https://tenant.eu.auth0.com \\
      --client-id 'ZXlK...' --realm Thermostats --scope 'openid offline_access' \\
      --username thermostat-1a --password-file /run/secrets/thermostat-1a \\
      --id-token --out /var/lib/device/device.jwt

  printf '%s' \"$PASSWORD\" | jwtgate-provision token ... --password-file - ...

Writes the token to --out and, when the provider returns one, the refresh
token to --out.refresh (both mode 0600, replaced atomically).";

const REFRESH_EXAMPLE: &str = "\
Example (from a timer every 5 minutes; a file read while nothing is due):
  jwtgate-provision refresh --domain https://tenant.eu.auth0.com \\
      --client-id 'ZXlK...' --id-token --out /var/lib/device/device.jwt \\
      --min-remaining 10m

Renews once less than a third of the token's lifetime (exp - iat; without
iat, from the token file's modification time) is left, or less than
--min-remaining when that is longer; a token whose expiry cannot be read
is renewed. --if-expiring-within is the earlier name of --min-remaining.";

const JWKS_EXAMPLE: &str = "\
Example:
  jwtgate-provision jwks --domain https://tenant.eu.auth0.com \\
      --out /etc/jwtgate/keys/auth0.json

The running gateway picks the new keys up by itself.";

#[derive(Parser)]
#[command(
    name = "jwtgate-provision",
    version,
    about = "Get device tokens and signing keys from the identity provider for jwtgate",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log what is done (verification keys loaded) on stderr, not only
    /// warnings and retries.
    #[arg(short, long, global = true)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Log a device in (OAuth 2 password grant) and store its token.
    #[command(after_help = TOKEN_EXAMPLE)]
    Token {
        #[command(flatten)]
        provider: ProviderArgs,
        #[command(flatten)]
        client: ClientArgs,
        /// The device's account.
        #[arg(long, value_name = "DEVICE")]
        username: String,
        /// File holding the device's password; `-` reads standard input.
        #[arg(long, value_name = "FILE")]
        password_file: SecretSource,
        /// Database connection to log in with (Auth0 password-realm grant).
        #[arg(long, value_name = "CONNECTION")]
        realm: Option<String>,
        /// API identifier the access token is for.
        #[arg(long, value_name = "API")]
        audience: Option<String>,
        /// Scopes, e.g. "openid offline_access" (offline_access: a refresh token).
        #[arg(long)]
        scope: Option<String>,
        /// The device's address, sent as auth0-forwarded-for (brute-force protection).
        #[arg(long, value_name = "IP")]
        forwarded_for: Option<IpAddr>,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Renew the token at --out with the refresh token at --out.refresh, when it is due.
    #[command(after_help = REFRESH_EXAMPLE)]
    Refresh {
        #[command(flatten)]
        provider: ProviderArgs,
        #[command(flatten)]
        client: ClientArgs,
        /// Also renew when less than this is left (30m, 6h, 1d); by default only a third of the lifetime counts.
        #[arg(
            long,
            value_name = "DURATION",
            value_parser = parse_ttl,
            visible_alias = "if-expiring-within"
        )]
        min_remaining: Option<Duration>,
        /// Renew whatever the token held.
        #[arg(long, conflicts_with = "min_remaining")]
        force: bool,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Download the provider's JWK set into the gateway's keys directory.
    #[command(after_help = JWKS_EXAMPLE)]
    Jwks {
        #[command(flatten)]
        provider: ProviderArgs,
        /// Where to write it: a *.json file in the gateway's keys directory.
        #[arg(long, value_name = "KEYS_DIR/NAME.json")]
        out: PathBuf,
    },
}

#[derive(Args)]
struct ProviderArgs {
    /// The provider: https://TENANT (plain http:// only on loopback).
    #[arg(long, value_name = "URL")]
    domain: String,
    /// Also trust this CA certificate (PEM) for the provider's TLS.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
}

#[derive(Args)]
struct ClientArgs {
    /// The application's client id.
    #[arg(long, value_name = "ID")]
    client_id: String,
    /// File holding the application's client secret; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    client_secret_file: Option<SecretSource>,
}

#[derive(Args)]
struct OutArgs {
    /// Token file to write (the refresh token goes to PATH.refresh).
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Store the ID token instead of the access token.
    #[arg(long)]
    id_token: bool,
    /// The claim holding the topic filters, as the gateway's topics_claim [default: topics].
    #[arg(long, value_name = "NAME", conflicts_with = "config")]
    topics_claim: Option<String>,
    /// Verify the token against the gateway's keys directory before storing it.
    #[arg(long, value_name = "DIR")]
    keys_dir: Option<PathBuf>,
    /// Verify the token as the gateway with this config file would: its [auth] (issuer, audience, algorithms, require_kid, lifetime, claim names) and keys directory (unless --keys-dir).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl OutArgs {
    /// Reads the gateway's config, when one is given.
    fn into_token_out(self) -> Result<TokenOut, Error> {
        let verify = match (&self.config, &self.keys_dir) {
            (Some(config), keys_dir) => Some(Verify::from_config(config, keys_dir.as_deref())?),
            (None, Some(keys_dir)) => Some(Verify::defaults(keys_dir)),
            (None, None) => None,
        };
        // With a config the claim names are the gateway's own.
        let (topics_claim, acl_claim) = match &verify {
            Some(Verify {
                auth,
                config: Some(_),
            }) => (auth.topics_claim.clone(), auth.acl_claim.clone()),
            _ => (
                self.topics_claim.unwrap_or_else(|| "topics".to_owned()),
                "acl".to_owned(),
            ),
        };
        Ok(TokenOut {
            path: self.out,
            kind: if self.id_token {
                TokenKind::Id
            } else {
                TokenKind::Access
            },
            topics_claim,
            acl_claim,
            verify,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(&logging::Options {
        flag: None,
        config: LogFormat::Auto,
        default_filter: if cli.verbose { "info" } else { "warn" },
        program: Program::Tool,
    });
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("jwtgate-provision: error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), Error> {
    let mut secrets = SecretReader::default();
    match command {
        Command::Token {
            provider,
            client,
            username,
            password_file,
            realm,
            audience,
            scope,
            forwarded_for,
            out,
        } => {
            let provider = connect(provider)?;
            let client = read_client(client, &mut secrets)?;
            let password = secrets.read("--password-file", &password_file)?;
            let grant = PasswordGrant {
                client,
                username,
                password,
                realm,
                audience,
                scope,
                forwarded_for,
            };
            let stored = provision::fetch_token(&provider, &grant, &out.into_token_out()?)?;
            report_stored(&stored);
        }
        Command::Refresh {
            provider,
            client,
            min_remaining,
            force,
            out,
        } => {
            // Every run checks its settings and reads the client secret, due
            // or not, so that a setup that cannot work fails the timer's
            // first run rather than the first renewal.
            let provider = connect(provider)?;
            let client = read_client(client, &mut secrets)?;
            let out = out.into_token_out()?;
            let when = if force {
                RenewWhen::Always
            } else {
                RenewWhen::Due { min_remaining }
            };
            match provision::refresh_token(&provider, &client, &out, when)? {
                Refreshed::NotNeeded(fresh) => {
                    println!("{}: not refreshed", NotDue(&out.path, &fresh));
                }
                Refreshed::Stored(stored) => report_stored(&stored),
            }
        }
        Command::Jwks { provider, out } => {
            let stored = provision::fetch_jwks(&connect(provider)?, &out)?;
            report_jwks(&stored);
        }
    }
    Ok(())
}

fn connect(args: ProviderArgs) -> Result<Provider, Error> {
    Provider::new(&args.domain, args.ca_file.as_deref())
}

fn read_client(args: ClientArgs, secrets: &mut SecretReader) -> Result<Client, Error> {
    let secret = args
        .client_secret_file
        .map(|from| secrets.read("--client-secret-file", &from))
        .transpose()?;
    Ok(Client {
        id: args.client_id,
        secret,
    })
}

fn report_stored(stored: &Stored) {
    for warning in &stored.warnings {
        eprintln!("jwtgate-provision: warning: {warning}");
    }
    let summary = &stored.summary;
    let mut facts = Vec::new();
    if let Some(subject) = &summary.subject {
        facts.push(format!("subject {subject:?}"));
    }
    if let Some(exp) = summary.expires_at {
        facts.push(expiry(exp));
    }
    if let Some(topics) = &summary.topics {
        facts.push(format!("topics {topics:?}"));
    }
    let facts = if facts.is_empty() {
        String::new()
    } else {
        format!(" ({})", facts.join(", "))
    };
    println!(
        "wrote the {} to {}{facts}",
        stored.kind,
        stored.path.display()
    );
    match &stored.refresh {
        RefreshFile::Written(path) => println!("wrote the refresh token to {}", path.display()),
        RefreshFile::Kept(path) => println!("kept the refresh token in {}", path.display()),
        RefreshFile::Removed(path) => println!(
            "removed {}, the refresh token of an earlier login",
            path.display()
        ),
        RefreshFile::Absent => {}
    }
}

fn expiry(exp: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    match exp.checked_sub(now) {
        Some(left) => format!("expires in {}", Human(Duration::from_secs(left))),
        None => format!("EXPIRED {} ago", Human(Duration::from_secs(now - exp))),
    }
}

fn report_jwks(stored: &JwksStored) {
    for skipped in &stored.skipped {
        eprintln!("jwtgate-provision: warning: the gateway will leave out {skipped}");
    }
    println!(
        "wrote {} key(s) to {}: {}",
        stored.key_ids.len(),
        stored.path.display(),
        stored.key_ids.join(", ")
    );
}

/// Why a token is kept: `device.jwt expires in 50m 0s, renewed once less
/// than 20m 0s is left (a third of its 1h 0m lifetime)`.
struct NotDue<'a>(&'a std::path::Path, &'a Fresh);

impl std::fmt::Display for NotDue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let NotDue(path, fresh) = self;
        write!(
            f,
            "{} expires in {}, renewed once less than {} is left",
            path.display(),
            Human(fresh.expires_in),
            Human(fresh.renew_within)
        )?;
        match fresh.lifetime {
            _ if fresh.by_min_remaining => f.write_str(" (--min-remaining)"),
            Some(lifetime) => write!(f, " (a third of its {} lifetime)", Human(lifetime)),
            None => Ok(()),
        }
    }
}

/// A duration as people read it: `5d 3h`, `2h 5m`, `4m 10s`.
struct Human(Duration);

impl std::fmt::Display for Human {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.as_secs();
        let (days, hours, minutes, seconds) =
            (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
        match (days, hours, minutes) {
            (0, 0, 0) => write!(f, "{seconds}s"),
            (0, 0, _) => write!(f, "{minutes}m {seconds}s"),
            (0, _, _) => write!(f, "{hours}h {minutes}m"),
            _ => write!(f, "{days}d {hours}h"),
        }
    }
}
