//! What each OAuth refusal is reported as.

#![allow(clippy::unwrap_used)]

use super::*;
use std::path::PathBuf;

#[test]
fn refusals_name_the_cause() {
    let password = Grant::Password {
        client_id: "app",
        username: "dev-1",
        forwarded_for: None,
    };
    let refresh_path = PathBuf::from("device.jwt.refresh");
    let refresh = Grant::Refresh {
        client_id: "app",
        refresh_path: &refresh_path,
    };
    let oauth = |error: &str, description: &str| OAuthError {
        error: error.into(),
        error_description: Some(description.into()),
    };
    let cases = [
        (
            &password,
            "invalid_grant",
            "Wrong email or password.",
            "wrong username or password",
        ),
        (
            &refresh,
            "invalid_grant",
            "Unknown or invalid refresh token.",
            "jwtgate-provision token",
        ),
        (
            &password,
            "unauthorized_client",
            "Grant type 'password' not allowed for the client.",
            "Grant Types > \"Password\"",
        ),
        (
            &refresh,
            "unauthorized_client",
            "Grant type 'refresh_token' not allowed for the client.",
            "\"Refresh Token\"",
        ),
        (
            &password,
            "unauthorized_client",
            "Client is not authorized",
            "check --client-id",
        ),
        (
            &password,
            "access_denied",
            "Unauthorized",
            "check --client-id",
        ),
        (
            &password,
            "mfa_required",
            "Multifactor authentication required",
            "multi-factor",
        ),
        (
            &password,
            "too_many_attempts",
            "Your account has been blocked",
            "blocked",
        ),
        (
            &password,
            "invalid_request",
            "Authorization server not configured with default connection.",
            "--realm",
        ),
        (
            &password,
            "server_error",
            "oops",
            "HTTP 400, server_error: \"oops\"",
        ),
    ];
    for (grant, code, description, expected) in cases {
        let message = grant.refusal(400, &oauth(code, description)).to_string();
        assert!(message.contains(expected), "{code}: {message}");
    }
}

#[test]
fn refusals_of_the_keyed_grants_name_their_cause() {
    let assertion = Grant::ClientCredentials {
        client_id: "app",
        signed: true,
        kid: Some("kid-1"),
    };
    let certificate = Grant::ClientCredentials {
        client_id: "app",
        signed: false,
        kid: None,
    };
    let device = Grant::DeviceCode { client_id: "app" };
    let oauth = |error: &str| OAuthError {
        error: error.into(),
        error_description: Some("why".into()),
    };
    for (grant, code, expected) in [
        (&assertion, "invalid_client", "public key registered"),
        (&assertion, "invalid_client", "\"kid-1\""),
        (&certificate, "invalid_client", "--mtls-cert"),
        (&assertion, "unauthorized_client", "client assertion"),
        (&device, "access_denied", "declined"),
        (&device, "expired_token", "expired"),
        (&device, "invalid_client", "check --client-id"),
    ] {
        let message = grant.refusal(400, &oauth(code)).to_string();
        assert!(message.contains(expected), "{code}: {message}");
        assert!(!message.contains('\n'), "{message}");
    }
    let disabled = OAuthError {
        error: "unauthorized_client".into(),
        error_description: Some("Grant type 'client_credentials' not allowed".into()),
    };
    let message = assertion.refusal(403, &disabled).to_string();
    assert!(message.contains("\"Client Credentials\""), "{message}");
}
