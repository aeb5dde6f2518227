#!/usr/bin/env python3
"""Regenerates the generated part of fuzz/corpus/ (everything except the
captured MQTT sessions in fuzz/corpus/mqtt_session/capture-*, which
capture_mqtt.py records from real clients).

The keys are the fixed fuzzing keys of src/fuzz/fixture.rs (copied here, they are
not secret), so tokens made here verify in the targets. JWK sets in the
shapes of real providers use freshly generated keys; nothing is downloaded.
Needs python3 with `cryptography`. Run from anywhere:

    python3 fuzz/make_corpus.py
"""

import base64
import hashlib
import hmac
import json
import os
import re
import struct
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
import datetime

FUZZ = Path(__file__).resolve().parent
CORPUS = FUZZ / "corpus"
SEP = b"\xff"

HMAC_B64 = "3qIF0KlnOK787Xs6K/+h+vbsPbr8nwsFsntN81mvH6tdVudpOML1lFd9D2Sn6Rutr+i944mpoS0k9QIAxq0tuQ=="
HMAC_KEY = base64.b64decode(HMAC_B64)
EC_PEM = b"""-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgdHnE6M10ugTETgyA
ll0z0/59vP6hhWofE1a76tfp42WhRANCAAQfF5HTbElIaHXpHBTuVtp75WefRP96
ifNKszPmgv6ghqwS2MYZ/T4ZzGmmhKzIe/wI/F4Wq35YcjoLdn8SWi8g
-----END PRIVATE KEY-----
"""
ED_PEM = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIMvKNKpSiNvojCfmKWtjTrplUSkATsARf+/NzJsI9d/m
-----END PRIVATE KEY-----
"""
EC_KEY = serialization.load_pem_private_key(EC_PEM, None)
ED_KEY = serialization.load_pem_private_key(ED_PEM, None)

IAT = 1700000000
EXP = 4102444800  # 2100: the corpus stays valid
ISSUER = "https://idp.fuzz.example/"

SESSION_HEADER = b'{"alg":"HS256","typ":"JWT","kid":"hs"}'
SESSION_CLAIMS = (b'{"sub":"fuzz-device","iat":1700000000,"exp":4102444800,'
                  b'"topics":["devices/fuzz-device/#","fleet/+/status","up"]}')


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def sign(alg, message):
    if alg.startswith("HS"):
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        return hmac.new(HMAC_KEY, message, digest).digest()
    if alg == "ES256":
        r, s = decode_dss_signature(EC_KEY.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return ED_KEY.sign(message)


def token(header, claims, alg):
    signed = b64u(header) + b"." + b64u(claims)
    return signed + b"." + b64u(sign(alg, signed))


def session_token():
    return token(SESSION_HEADER, SESSION_CLAIMS, "HS256")


def write(target, name, data):
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def claims(**extra):
    base = {"sub": "dev-1", "iat": IAT, "exp": EXP, "topics": ["devices/dev-1/#", "fleet/+/status"]}
    base.update(extra)
    return json.dumps({k: v for k, v in base.items() if v is not None}, separators=(",", ":")).encode()


# ------------------------------------------------------------ token_signed
SIGNERS = ["HS256", "HS384", "HS512", "ES256", "EdDSA"]
KIDS = {"HS256": "hs", "HS384": "hs", "HS512": "hs", "ES256": "ec", "EdDSA": "ed"}


def token_signed():
    strict = dict(iss=ISSUER, aud="gw-fuzz")
    for i, alg in enumerate(SIGNERS):
        write("token_signed", f"{alg}-valid", bytes([i]) + claims())
        write("token_signed", f"{alg}-strict", bytes([i | 8]) + claims(**strict))
        write("token_signed", f"{alg}-no-kid", bytes([i | 16]) + claims())
    cases = {
        "aud-list": claims(iss=ISSUER, aud=["x", "gw-other"]),
        "topics-string": claims(topics="devices/dev-1/up"),
        "topics-bad-entries": claims(topics=["ok/#", "a/#/b", "$share/g/x", "", "x+", 7]),
        "topics-dollar": claims(topics=["$SYS/#", "#", "+/+"]),
        "expired": claims(exp=1600000000, iat=1500000000),
        "no-exp": claims(exp=None),
        "nbf-future": claims(nbf=EXP - 10),
        "iat-after-exp": claims(iat=EXP + 100),
        "exp-float": json.dumps({"sub": "d", "exp": 4102444800.5, "topics": ["a"]}).encode(),
        "exp-huge": b'{"sub":"d","exp":1e400,"topics":["a"]}',
        "sub-empty": claims(sub=""),
        "sub-number": claims(sub=12),
        "duplicate-sub": b'{"sub":"a","sub":"b","exp":4102444800,"topics":["a/#"]}',
        "jti": claims(jti="abc-123"),
        "namespaced-claim": claims(**{"https://example.com/topics": ["x/#"]}),
        "not-object": b'["sub","dev"]',
        "unicode": claims(sub="g\u00e9r\u00e4t-\U0001f600", topics=["\u00fc/\u00df/#"]),
        # EMQX's acl claim (issue 12), both forms, alone and beside topics.
        "acl-object": claims(topics=None, acl={"pub": ["devices/${clientid}/up"], "sub": ["cmd/${sub}/#"],
                                                "all": ["eq fleet/+/status"], "other": ["x"]}),
        "acl-rules": claims(topics=None, acl=[
            {"permission": "deny", "action": "publish", "topic": "devices/${username}/secret"},
            {"permission": "allow", "action": "all", "topic": "devices/${sub}/#", "qos": [0, 1], "retain": False},
            {"permission": "allow", "action": "subscribe", "topic": "fleet/+/status", "qos": 2},
            {"permission": "deny", "action": "all", "topic": "#"}]),
        "acl-rules-bad": claims(topics=None, acl=[{"permission": "maybe", "action": "publish", "topic": "a"}]),
        "acl-and-topics": claims(acl={"pub": ["a/#"]}),
        "acl-not-json-shape": claims(topics=None, acl="a/#"),
    }
    for name, body in cases.items():
        write("token_signed", name, b"\x00" + body)
        write("token_signed", name + "-strict", b"\x08" + body)
    headers = {
        "header-typ-at": b'{"alg":"HS256","typ":"at+jwt","kid":"hs"}',
        "header-crit": b'{"alg":"HS256","kid":"hs","crit":["exp"]}',
        "header-none": b'{"alg":"none","kid":"hs"}',
        "header-alg-mismatch": b'{"alg":"RS256","kid":"hs"}',
        "header-kid-unknown": b'{"alg":"HS256","kid":"nope"}',
        "header-jku": b'{"alg":"ES256","kid":"ec","jku":"https://evil.example/jwks"}',
        "header-not-json": b'{"alg":"HS256",',
    }
    for name, header in headers.items():
        write("token_signed", name, b"\x00" + header + SEP + claims())
    write("token_signed", "es256-header", b"\x03" + b'{"alg":"ES256","kid":"ec","typ":"JWT"}' + SEP + claims())


# ------------------------------------------------------------ verify_token
def verify_token():
    for alg in SIGNERS:
        header = json.dumps({"alg": alg, "typ": "JWT", "kid": KIDS[alg]}).encode()
        write("verify_token", f"{alg}-token", token(header, claims(), alg))
    write("verify_token", "session-token", session_token())
    # The split mode: header, claims and signature before base64url.
    write("verify_token", "split-hs256", b'{"alg":"HS256","kid":"hs"}.' + claims() + b".sig")
    write("verify_token", "split-none", b'{"alg":"none"}.' + claims() + b".")
    write("verify_token", "secret-text", HMAC_B64)
    write("verify_token", "two-parts", b64u(b'{"alg":"HS256"}') + b"." + b64u(claims()))


# ------------------------------------------------------------ JWK sets
def rsa_jwk(key, **extra):
    numbers = key.public_key().public_numbers()
    def uint(n):
        return b64u(n.to_bytes((n.bit_length() + 7) // 8, "big")).decode()
    jwk = {"kty": "RSA", "n": uint(numbers.n), "e": uint(numbers.e)}
    jwk.update(extra)
    return jwk


def cert_der(key, name):
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def x5(key, name):
    der = cert_der(key, name)
    return {
        "x5c": [base64.b64encode(der).decode()],
        "x5t": b64u(hashlib.sha1(der).digest()).decode(),
        "x5t#S256": b64u(hashlib.sha256(der).digest()).decode(),
    }


def ec_jwk(key, crv, size, **extra):
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": crv, "x": b64u(numbers.x.to_bytes(size, "big")).decode(),
           "y": b64u(numbers.y.to_bytes(size, "big")).decode()}
    jwk.update(extra)
    return jwk


def jwks_documents():
    r1 = rsa.generate_private_key(65537, 2048)
    r2 = rsa.generate_private_key(65537, 2048)
    r3 = rsa.generate_private_key(65537, 2048)
    docs = {}
    # Auth0: two RS256 signing keys (current and next), each with its
    # certificate chain and thumbprint.
    docs["auth0"] = {"keys": [
        rsa_jwk(r1, kid="Q0Y3N0FBQkE2MzY5RkY5NkM2NjdBOTg3", use="sig", alg="RS256",
                **x5(r1, "dev-tenant.eu.auth0.com")),
        rsa_jwk(r2, kid="mD7SxRbW8f1X2gN5kq3Lw", use="sig", alg="RS256",
                **x5(r2, "dev-tenant.eu.auth0.com")),
    ]}
    # Google: bare RSA keys with alg and use, no certificates.
    docs["google"] = {"keys": [
        rsa_jwk(r2, kid="a50f6e70ef4b548a5fd9142eecd1fb8f54dce9ee", use="sig", alg="RS256"),
        rsa_jwk(r3, kid="89ce3598c473af1bda4bff95e6c8736450206fba", use="sig", alg="RS256"),
    ]}
    # Keycloak realm: an RS256 signing key and an RSA-OAEP encryption key
    # (which the gateway must skip), both with certificates.
    docs["keycloak"] = {"keys": [
        rsa_jwk(r1, kid="l3JmFzQ2hZ9TqkT1vX0pYb4KcXo9mWm5nU2eZ7bS1aE", use="sig", alg="RS256",
                **x5(r1, "devices")),
        rsa_jwk(r3, kid="Tt3vC0w6yq0lZ8o2hN1kV9xR4sJ7mB5dF6gH3jK2lQ8", use="enc", alg="RSA-OAEP",
                **x5(r3, "devices")),
    ]}
    e256 = ec.generate_private_key(ec.SECP256R1())
    e384 = ec.generate_private_key(ec.SECP384R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_x = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    docs["mixed"] = {"keys": [
        ec_jwk(e256, "P-256", 32, kid="ec-256", use="sig", alg="ES256"),
        ec_jwk(e384, "P-384", 48, kid="ec-384", alg="ES384"),
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64u(ed_x).decode()},
        {"kty": "oct", "kid": "shared", "alg": "HS256", "k": b64u(os.urandom(32)).decode()},
        {"kty": "oct", "kid": "short", "k": b64u(b"too short").decode()},
        {"kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
        {"kty": "EC", "crv": "P-256", "kid": "off-curve", "x": b64u(b"\x01" * 32).decode(),
         "y": b64u(b"\x02" * 32).decode()},
    ]}
    docs["no-kid"] = {"keys": [rsa_jwk(r1), ec_jwk(e256, "P-256", 32)]}
    docs["empty"] = {"keys": []}
    docs["single-jwk"] = rsa_jwk(r1, kid="lonely")
    return docs


def jwks_parse(docs):
    for name, doc in docs.items():
        write("jwks_parse", name + ".json", json.dumps(doc, indent=2))
    write("jwks_parse", "keys-not-list.json", '{"keys": {"kty": "RSA"}}')
    write("jwks_parse", "truncated.json", json.dumps(docs["google"])[:300])


# ------------------------------------------------------------ keys_dir
def keys_dir(docs):
    revoked = b"# revoked after the laptop was lost\njti:abc-123\nsub:dev-7\nkid:old-key\n"
    write("keys_dir", "all-good", HMAC_B64.encode() + b"\n" + SEP + json.dumps(docs["keycloak"]).encode() + SEP + revoked)
    write("keys_dir", "auth0", b"" + SEP + json.dumps(docs["auth0"]).encode() + SEP + b"")
    write("keys_dir", "mixed", base64.b64encode(os.urandom(48)) + SEP + json.dumps(docs["mixed"]).encode() + SEP + b"sub:x\n")
    dup = {"keys": [{"kty": "oct", "kid": "k", "k": b64u(os.urandom(32)).decode()}]}
    write("keys_dir", "duplicate-kid", HMAC_B64.encode() + SEP + json.dumps(dup).encode() + SEP + b"")
    write("keys_dir", "short-secret", b"c2hvcnQ=" + SEP + b"{" + SEP + b"jti:\nnope:x\n\xff\xfe")
    write("keys_dir", "bad-deny", b"not base64!" + SEP + b"[]" + SEP + b"jti:a b\nsub\n" + b"kid:" + b"x" * 300 + b"\n")
    write("keys_dir", "url-safe-secret", b64u(HMAC_KEY) + SEP + SEP)


# ------------------------------------------------------------ config
def config():
    readme = (FUZZ.parent / "README.md").read_text()
    match = re.search(r"```toml\n(listen = .*?)```", readme, re.S)
    full = match.group(1)
    write("config", "readme-full.toml", full)
    write("config", "debian-conffile.toml", (FUZZ.parent / "systemd/deb/jwtgate.toml").read_text())
    write("config", "empty.toml", "")
    write("config", "minimal.toml", 'listen = "127.0.0.1:8883"\n')
    write("config", "issuer-audience.toml",
          '[auth]\nissuer = "https://tenant.eu.auth0.com/"\naudience = ["mqtt-gateway", "gw-2"]\n'
          'require_kid = true\nalgorithms = ["RS256", "ES256"]\nmax_token_lifetime_secs = 86400\n')
    write("config", "namespaced-claim.toml",
          '[auth]\ntopics_claim = "https://example.com/claims/topics"\naudience = "gw"\n')
    write("config", "limits-edges.toml",
          '[limits]\nmax_packet_size = 1024\nmax_connect_packet_size = 1024\nmax_keep_alive_secs = 1\n'
          'max_topic_aliases = 0\nmemory_budget_mb = 1\n[sessions]\nmax_inflight = 1\n'
          'max_session_expiry_secs = 0\nslow_subscriber = "drop"\n')
    write("config", "too-big.toml", '[limits]\nmax_packet_size = 268435456\nmax_connect_packet_size = 2048\n')
    write("config", "connect-over-packet.toml", '[limits]\nmax_packet_size = 2048\nmax_connect_packet_size = 4096\n')
    write("config", "old-router.toml", '[router]\nmax_segment_size = 104857600\n')
    write("config", "deny-publish-top.toml", 'deny_publish = "disconnect"\n[tls]\ncert = "/etc/ssl/c.pem"\nkey = "/etc/ssl/k.pem"\n')
    write("config", "unknown-key.toml", '[auth]\nkeys_dirr = "keys"\n')
    write("config", "metrics.toml", '[metrics]\nlisten = "127.0.0.1:9883"\n')
    write("config", "metrics-remote.toml", '[metrics]\nlisten = "0.0.0.0:9883"\nallow_remote = true\n')
    write("config", "metrics-refused.toml", '[metrics]\nlisten = "[::]:9883"\n[log]\nformat = "json"\n')
    write("config", "ipv6.toml", 'listen = "[::]:8883"\n[limits]\nwrite_timeout_secs = 0\n')
    bridge = re.search(r"```toml\n(\[storage\]\n.*?\[\[bridge\]\].*?)```", readme, re.S).group(1)
    write("config", "readme-bridge.toml", bridge)
    write("config", "bridges-edges.toml",
          '[storage]\nsync_interval_ms = 0\n'
          '[[bridge]]\nname = "a"\nremote = "mqtt://[::1]"\nclient_id = "c"\nprotocol = 4\n'
          'subscribe = [ { remote = "s/+/cmd/#", strip_prefix = "s/", local_prefix = "in/", qos = 0 } ]\n'
          '[[bridge]]\nname = "b_2"\nremote = "mqtts://10.0.0.1:1"\nclient_id = "c"\ntoken_file = "/run/t"\n'
          'cert_file = "c.pem"\nkey_file = "k.pem"\nkeep_alive_secs = 5\nmax_queue_mb = 1\n'
          'forward = [ { local = "#" }, { local = "$SYS/x", remote_prefix = "p/", qos = 0 } ]\n')
    write("config", "bridges-bad.toml",
          '[[bridge]]\nname = "a"\nremote = "mqtt://broker.example"\nclient_id = "c"\n'
          'forward = [ { local = "a/#/b" } ]\n[[bridge]]\nname = "a"\n')


# ------------------------------------------------------------ topic
def topic():
    cases = [
        ("devices/dev-1/up", "devices/+/up", "devices/dev-1/#"),
        ("a/b", "#", "+/#"),
        ("$SYS/broker/load", "#", "$SYS/#"),
        ("$SYS/x", "+/x", "$SYS/+"),
        ("/a", "/#", "+/a"),
        ("a", "a/#", "a"),
        ("a//b", "a/+/b", "a//b"),
        ("sport/tennis/player1", "sport/tennis/+", "sport/#"),
        ("x", "$share/group/x/#", "$share/g/+"),
        ("x", "$share//x", "$share/g+/x"),
        ("x", "$share/g", "$share/g/#"),
        ("a/+", "a/b#", "a/#/b"),
        ("", "+", ""),
        ("\u00fc/\u00df", "\u00fc/+", "+/\u00df"),
        ("a\u0000b", "a/\u0000", "#"),
        ("/", "+/+", "/+"),
    ]
    for i, (t, a, b) in enumerate(cases):
        write("topic", f"case-{i:02}", t.encode() + SEP + a.encode() + SEP + b.encode())


# ------------------------------------------------------------ mqtt_session
def string(data):
    return struct.pack(">H", len(data)) + data


def varint(n):
    out = b""
    while True:
        byte = n % 128
        n //= 128
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def connect(level, client_id, token, will=None, v5_props=b"", keep_alive=60, clean=True):
    """A CONNECT; a token of None sends no user name or password (MQTT 5
    enhanced authentication carries it in the properties)."""
    name = b"MQIsdp" if level == 3 else b"MQTT"
    flags = (0xC0 if token is not None else 0) | (0x02 if clean else 0)
    payload = string(client_id)
    if will:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        if level == 5:
            payload += varint(0)
        payload += string(topic) + string(message)
    if token is not None:
        payload += string(b"JWT") + string(token)
    body = string(name) + bytes([level, flags]) + struct.pack(">H", keep_alive)
    if level == 5:
        body += varint(len(v5_props)) + v5_props
    return packet(0x10, body + payload)


def publish(level, topic, payload, qos=0, retain=False, pid=1, props=b""):
    body = string(topic)
    if qos:
        body += struct.pack(">H", pid)
    if level == 5:
        body += varint(len(props)) + props
    return packet(0x30 | (qos << 1) | (1 if retain else 0), body + payload)


def subscribe(level, pid, filters, props=b""):
    body = struct.pack(">H", pid)
    if level == 5:
        body += varint(len(props)) + props
    for f, options in filters:
        body += string(f) + bytes([options])
    return packet(0x82, body)


def disconnect(level):
    return b"\xe0\x00" if level != 5 else b"\xe0\x02\x00\x00"


def mqtt_session():
    """Hand-written sessions following the spec and the packets mqtt.js
    sends by default (client id `mqttjs_` + 8 hex digits, keep-alive 60,
    clean session; MQTT 5 without CONNECT properties)."""
    tok = session_token()
    selector_raw = {3: 0x00, 4: 0x02, 5: 0x04}
    selector_prepend = {3: 0x01, 4: 0x03, 5: 0x05}
    for level in (3, 4, 5):
        after = (subscribe(level, 1, [(b"devices/fuzz-device/#", 1), (b"fleet/+/status", 0)])
                 + publish(level, b"devices/fuzz-device/telemetry", b'{"t":21.5}', qos=1, pid=2)
                 + publish(level, b"fleet/a/status", b"online", retain=True)
                 + publish(level, b"up", b"x", qos=2, pid=3) + b"\x62\x02\x00\x03"
                 + publish(level, b"other/device/secret", b"not mine")
                 + subscribe(level, 4, [(b"#", 0), (b"$SYS/#", 0), (b"$share/g/fleet/+/status", 1)])
                 + b"\xc0\x00" + disconnect(level))
        write("mqtt_session", f"mqttjs-v{level}-session", bytes([selector_raw[level]])
              + connect(level, b"mqttjs_3f9a2c1b", tok) + after)
        write("mqtt_session", f"prepended-v{level}", bytes([selector_prepend[level]]) + after)
        write("mqtt_session", f"will-v{level}", bytes([selector_raw[level]])
              + connect(level, b"mqttjs_will", tok, will=(b"fleet/fuzz-device/status", b"offline", 1, True)))
        write("mqtt_session", f"will-outside-v{level}", bytes([selector_raw[level]])
              + connect(level, b"mqttjs_will", tok, will=(b"other/status", b"offline", 0, False)))
        write("mqtt_session", f"bad-token-v{level}", bytes([selector_raw[level]])
              + connect(level, b"c", tok[:-3] + b"AAA") + after)
        write("mqtt_session", f"prepended-deny-disconnect-v{level}", bytes([selector_prepend[level] | 0x10])
              + publish(level, b"other/x", b"no") + publish(level, b"up", b"late"))
    v5 = 5
    props = bytes([0x11]) + struct.pack(">I", 3600) + bytes([0x21]) + struct.pack(">H", 10) \
        + bytes([0x22]) + struct.pack(">H", 5) + bytes([0x26]) + string(b"app") + string(b"demo")
    write("mqtt_session", "v5-connect-properties", b"\x00" + connect(v5, b"dev", tok, v5_props=props)
          + publish(v5, b"up", b"a", props=bytes([0x23]) + struct.pack(">H", 1))
          + publish(v5, b"", b"b", props=bytes([0x23]) + struct.pack(">H", 1))
          + publish(v5, b"up", b"c", props=bytes([0x02]) + struct.pack(">I", 30) + bytes([0x01, 1])))
    write("mqtt_session", "v5-auth-method", b"\x00" + connect(v5, b"dev", tok, v5_props=bytes([0x15]) + string(b"SCRAM-SHA-1")))
    # Enhanced authentication (issue 12): method JWT, the token as data;
    # then a re-authentication with AUTH 0x19, a good one and a bad one.
    jwt_auth = bytes([0x15]) + string(b"JWT") + bytes([0x16]) + string(tok)
    write("mqtt_session", "v5-enhanced-auth-reauth", b"\x00" + connect(v5, b"dev", None, v5_props=jwt_auth)
          + publish(v5, b"up", b"a")
          + packet(0xF0, b"\x19" + varint(len(jwt_auth)) + jwt_auth)
          + publish(v5, b"up", b"b")
          + packet(0xF0, b"\x19" + varint(len(jwt_auth)) + jwt_auth[:-4] + b"AAAA")
          + publish(v5, b"up", b"c"))
    write("mqtt_session", "v5-reauth-after-password", b"\x04" + connect(v5, b"dev", tok)
          + packet(0xF0, b"\x19" + varint(len(jwt_auth)) + jwt_auth) + publish(v5, b"up", b"d"))
    # The bytes issue 10 names: a 3.1 CONNECT cut to a 2-byte frame.
    write("mqtt_session", "sniff-short-frame", b"\x00" + b"\x10\x00\x00\x06MQIsdp\x03")
    write("mqtt_session", "unsupported-level", b"\x00" + packet(0x10, string(b"MQTT") + b"\x07\x02\x00\x3c" + string(b"x")))
    write("mqtt_session", "publish-before-connect", b"\x00" + publish(4, b"up", b"early"))
    write("mqtt_session", "huge-remaining-length", b"\x00\x10\xff\xff\xff\x7f")
    write("mqtt_session", "empty-client-id-persistent", b"\x00" + connect(4, b"", tok, clean=False))


def main():
    token_signed()
    verify_token()
    docs = jwks_documents()
    jwks_parse(docs)
    keys_dir(docs)
    config()
    topic()
    mqtt_session()


if __name__ == "__main__":
    main()
