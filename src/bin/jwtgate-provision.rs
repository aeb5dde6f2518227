//! `jwtgate-provision`: device tokens and the provider's signing keys, the
//! command line over [`jwtgate::provision`].
//!
//! - `client-assertion` gets a device its token with the client credentials
//!   grant, authenticated by the device's own key (`private_key_jwt`) or
//!   its TLS client certificate (RFC 8705).
//! - `device-code` gets it with the device authorization grant (RFC 8628),
//!   approved by a technician in a browser.
//! - `token` logs a device in (OAuth 2 password grant) and stores its token.
//! - `refresh` renews a token: with the stored refresh token, or by running
//!   the client credentials grant again when given the device's key.
//! - `keygen` makes a device key pair (and a CSR for the mTLS path).
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
    self, Client, ClientCertFiles, ClientCredentials, DeviceCodeGrant, DeviceKey, Error, Fresh,
    Generated, JwksStored, Keygen, PasswordGrant, Provider, RefreshFile, Refreshed, RenewWhen,
    SecretReader, SecretSource, Stored, TokenKind, TokenOut, UserCode, Verify,
};
use jwtgate::token::parse_ttl;

const EXAMPLES: &str = "\
Examples:
  # on the gateway: the provider's signing keys, for RS256/ES256 tokens
  jwtgate-provision jwks --domain https://tenant.eu.auth0.com --out /etc/jwtgate/keys/auth0.json
  # on the device: a key of its own, registered with the provider, then a token
  jwtgate-provision keygen --out /etc/jwtgate/provision
  jwtgate-provision client-assertion --domain https://tenant.eu.auth0.com --client-id ID \\
      --key /etc/jwtgate/provision/device.key --audience mqtt-gateway --out device.jwt
  # from a timer: renew once it is due
  jwtgate-provision refresh --domain https://tenant.eu.auth0.com --client-id ID \\
      --key /etc/jwtgate/provision/device.key --audience mqtt-gateway --out device.jwt
  # with a technician beside the device instead, and a refresh token to renew with
  jwtgate-provision device-code --domain https://tenant.eu.auth0.com --client-id ID \\
      --scope 'openid offline_access' --audience mqtt-gateway --out device.jwt
  jwtgate-provision refresh --domain https://tenant.eu.auth0.com --client-id ID \\
      --out device.jwt";

const CLIENT_ASSERTION_EXAMPLE: &str = "\
Example (private_key_jwt: the device signs a 60-second assertion with its key):
  jwtgate-provision client-assertion --domain https://tenant.eu.auth0.com \\
      --client-id 'ZXlK...' --key /etc/jwtgate/provision/device.key \\
      --assertion-audience https://tenant.eu.auth0.com/ --audience mqtt-gateway \\
      --out /var/lib/jwtgate-provision/device.jwt

Example (mTLS: the device's certificate authenticates it and binds the token):
  jwtgate-provision client-assertion --domain https://tenant.eu.auth0.com \\
      --client-id 'ZXlK...' --mtls-cert device.crt --mtls-key device.key \\
      --mtls-endpoint https://mtls.auth.example.com/oauth/token \\
      --audience mqtt-gateway --out /var/lib/jwtgate-provision/device.jwt

Writes the token to --out (mode 0600, replaced atomically). The grant returns
no refresh token: `refresh` with the same --key (or --mtls-cert/--mtls-key)
runs it again once the token is due. The assertion's aud is the token
endpoint's URL unless --assertion-audience (Auth0 documents its tenant's
URL with a trailing /); its kid is the key's JWK thumbprint unless --kid.";

const DEVICE_CODE_EXAMPLE: &str = "\
Example (a technician approves the device in a browser):
  jwtgate-provision device-code --domain https://tenant.eu.auth0.com \\
      --client-id 'ZXlK...' --scope 'openid offline_access' --audience mqtt-gateway \\
      --out /var/lib/jwtgate-provision/device.jwt

Prints where to go and the code to enter on stderr, polls at the interval
the provider sets (slower after slow_down) until the code is approved,
denied or expired, then writes the token to --out and, with
offline_access, the refresh token to --out.refresh (mode 0600).";

const KEYGEN_EXAMPLE: &str = "\
Example:
  jwtgate-provision keygen --out /etc/jwtgate/provision --csr --subject thermostat-1a

Writes DIR/device.key (P-256, PKCS#8, mode 0600), DIR/device.pub.pem and
DIR/device.jwk.json (register one with the provider for Private Key JWT), and
with --csr DIR/device.csr, for the device CA to sign for the mTLS path.
Refuses if any of them exists: a key is never replaced.";

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
    /// Get a token with the client credentials grant, the device proving who it is with its own key (private_key_jwt) or TLS client certificate (mTLS).
    #[command(after_help = CLIENT_ASSERTION_EXAMPLE)]
    ClientAssertion {
        #[command(flatten)]
        provider: ProviderArgs,
        /// The application's client id.
        #[arg(long, value_name = "ID")]
        client_id: String,
        #[command(flatten)]
        device: DeviceArgs,
        /// API identifier the access token is for.
        #[arg(long, value_name = "API")]
        audience: Option<String>,
        /// Scopes to ask for.
        #[arg(long)]
        scope: Option<String>,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Get a token with the device authorization grant: a technician approves the device in a browser.
    #[command(after_help = DEVICE_CODE_EXAMPLE)]
    DeviceCode {
        #[command(flatten)]
        provider: ProviderArgs,
        #[command(flatten)]
        client: ClientArgs,
        /// API identifier the access token is for.
        #[arg(long, value_name = "API")]
        audience: Option<String>,
        /// Scopes, e.g. "openid offline_access" (offline_access: a refresh token).
        #[arg(long)]
        scope: Option<String>,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Make a device key pair (ES256) and, with --csr, a certificate signing request.
    #[command(after_help = KEYGEN_EXAMPLE)]
    Keygen {
        /// Directory to write to (created 0700 when missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The files' name: NAME.key, NAME.pub.pem, NAME.jwk.json, NAME.csr.
        #[arg(long, default_value = "device")]
        name: String,
        /// Also write NAME.csr, for a client certificate (the mTLS path).
        #[arg(long, requires = "subject")]
        csr: bool,
        /// The CSR's subject common name, e.g. the device's name.
        #[arg(long, value_name = "CN", requires = "csr")]
        subject: Option<String>,
    },
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
        /// With --key or --mtls-cert: renew by running the client credentials grant again, not with a refresh token.
        #[command(flatten)]
        device: DeviceArgs,
        /// With --key or --mtls-cert: the API identifier the access token is for.
        #[arg(long, value_name = "API")]
        audience: Option<String>,
        /// With --key or --mtls-cert: the scopes to ask for.
        #[arg(long)]
        scope: Option<String>,
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

/// How a device proves who it is without a shared secret.
#[derive(Args)]
struct DeviceArgs {
    /// The device's private key (PEM: P-256 signs ES256, RSA signs RS256), to sign the client assertion with.
    #[arg(long, value_name = "PEM")]
    key: Option<PathBuf>,
    /// The assertion's kid [default: the key's JWK thumbprint, as keygen's JWK says].
    #[arg(long, value_name = "KID", requires = "key")]
    kid: Option<String>,
    /// The assertion's aud [default: the token endpoint's URL].
    #[arg(long, value_name = "URL", requires = "key")]
    assertion_audience: Option<String>,
    /// The device's TLS client certificate (PEM) for mTLS client authentication (RFC 8705).
    #[arg(long, value_name = "PEM", requires = "mtls_key")]
    mtls_cert: Option<PathBuf>,
    /// The private key of --mtls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "mtls_cert")]
    mtls_key: Option<PathBuf>,
    /// The token endpoint that asks for client certificates [default: DOMAIN/oauth/token].
    #[arg(long, value_name = "URL", requires = "mtls_cert")]
    mtls_endpoint: Option<String>,
}

impl DeviceArgs {
    fn is_given(&self) -> bool {
        self.key.is_some() || self.mtls_cert.is_some()
    }

    /// The provider, reached with the client certificate when there is one.
    fn provider(&self, provider: Provider) -> Result<Provider, Error> {
        match (&self.mtls_cert, &self.mtls_key) {
            (Some(cert), Some(key)) => provider.with_client_cert(&ClientCertFiles {
                cert: cert.clone(),
                key: key.clone(),
                endpoint: self.mtls_endpoint.clone(),
            }),
            _ => Ok(provider),
        }
    }

    fn grant(
        self,
        client_id: String,
        audience: Option<String>,
        scope: Option<String>,
    ) -> Result<ClientCredentials, Error> {
        let key = self
            .key
            .map(|path| DeviceKey::load(&path, self.kid))
            .transpose()?;
        Ok(ClientCredentials {
            client_id,
            key,
            assertion_audience: self.assertion_audience,
            audience,
            scope,
        })
    }
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
        Command::ClientAssertion {
            provider,
            client_id,
            device,
            audience,
            scope,
            out,
        } => {
            let provider = device.provider(connect(provider)?)?;
            let grant = device.grant(client_id, audience, scope)?;
            let stored =
                provision::fetch_client_credentials(&provider, &grant, &out.into_token_out()?)?;
            report_stored(&stored);
        }
        Command::DeviceCode {
            provider,
            client,
            audience,
            scope,
            out,
        } => {
            let provider = connect(provider)?;
            let grant = DeviceCodeGrant {
                client: read_client(client, &mut secrets)?,
                audience,
                scope,
            };
            let stored = provision::fetch_with_device_code(
                &provider,
                &grant,
                &out.into_token_out()?,
                &mut show_user_code,
            )?;
            report_stored(&stored);
        }
        Command::Keygen {
            out,
            name,
            csr: _,
            subject,
        } => {
            let generated = provision::keygen(&Keygen {
                dir: out,
                name,
                csr_subject: subject,
            })?;
            report_keygen(&generated);
        }
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
            device,
            audience,
            scope,
            out,
        } => {
            // Every run checks its settings and reads the client secret or
            // the device key, due or not, so that a setup that cannot work
            // fails the timer's first run rather than the first renewal.
            let provider = connect(provider)?;
            let out = out.into_token_out()?;
            let when = if force {
                RenewWhen::Always
            } else {
                RenewWhen::Due { min_remaining }
            };
            let refreshed = if device.is_given() {
                if client.client_secret_file.is_some() {
                    return Err(Error::Usage(
                        "--client-secret-file is for the refresh token grant; with --key or --mtls-cert the device authenticates without one",
                    ));
                }
                let provider = device.provider(provider)?;
                let grant = device.grant(client.client_id, audience, scope)?;
                provision::renew_client_credentials(&provider, &grant, &out, when)?
            } else {
                if audience.is_some() || scope.is_some() {
                    return Err(Error::Usage(
                        "--audience and --scope belong to --key or --mtls-cert; a refresh token keeps those of its login",
                    ));
                }
                let client = read_client(client, &mut secrets)?;
                provision::refresh_token(&provider, &client, &out, when)?
            };
            match refreshed {
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

/// The technician's two lines, on stderr with the other things meant for
/// a person (stdout says what was written).
fn show_user_code(code: &UserCode) {
    eprintln!(
        "To authorize this device, open {} and enter the code {}",
        code.verification_uri, code.user_code
    );
    match &code.verification_uri_complete {
        Some(complete) => eprintln!(
            "(or open {complete}); the code expires in {}. Waiting for approval...",
            Human(code.expires_in)
        ),
        None => eprintln!(
            "The code expires in {}. Waiting for approval...",
            Human(code.expires_in)
        ),
    }
}

fn report_keygen(generated: &Generated) {
    println!(
        "wrote the private key to {} (mode 0600; it stays on the device)",
        generated.key.display()
    );
    println!(
        "wrote the public key to {} and {} (kid {:?}): register one with the provider",
        generated.public_pem.display(),
        generated.jwk.display(),
        generated.kid
    );
    if let Some(csr) = &generated.csr {
        println!(
            "wrote the certificate signing request to {}: have the device CA sign it",
            csr.display()
        );
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
