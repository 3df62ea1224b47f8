#![doc = include_str!("../README.md")]

use std::io::{Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use calling_api::ErrorCode;
use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use serde_json::{Map, Value};

/// A decompressed UserSig larger than this is refused (no zip bombs).
const MAX_JSON_LEN: u64 = 16 * 1024;

/// What a valid UserSig says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSigClaims {
    /// The user it was issued for.
    pub identifier: String,
    /// The app it was issued for.
    pub sdk_app_id: u64,
    /// Issued at, unix seconds.
    pub time: u64,
    /// Valid for this many seconds after `time`.
    pub expire: u64,
    /// The optional user buffer.
    pub userbuf: Option<Vec<u8>>,
}

/// Why a UserSig is refused. Each maps to its own [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserSigError {
    /// Not a UserSig at all: bad base64, not zlib, not JSON, missing fields.
    #[error("malformed UserSig: {0}")]
    Malformed(String),
    /// Issued for another sdkAppId.
    #[error("UserSig issued for sdkAppId {found}")]
    WrongApp {
        /// The sdkAppId inside.
        found: u64,
    },
    /// Issued for another user.
    #[error("UserSig issued for another user")]
    WrongUser,
    /// The HMAC does not match the content: tampered, or another key.
    #[error("UserSig signature does not match")]
    BadSignature,
    /// `time + expire` is not in the future.
    #[error("UserSig expired at {expired_at} (now {now})")]
    Expired {
        /// `time + expire`.
        expired_at: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// Issued further in the future than the verifier's clock may be off.
    #[error("UserSig issued at {time}, more than {max_skew} s after now ({now})")]
    IssuedInTheFuture {
        /// `TLS.time`.
        time: u64,
        /// The verifier's clock.
        now: u64,
        /// The skew allowed.
        max_skew: u64,
    },
    /// Valid for longer than the verifier allows.
    #[error("UserSig valid for {expire} s, longer than the {max_lifetime} s allowed")]
    LifetimeTooLong {
        /// `TLS.expire`.
        expire: u64,
        /// The longest lifetime allowed.
        max_lifetime: u64,
    },
}

/// The bounds a verifier puts on a UserSig's times, beyond expiry: a
/// signature from the far future, or one that never expires, is a leaked
/// key's favourite; refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBounds {
    /// How far in the future `TLS.time` may be (clocks differ), seconds.
    pub max_skew: u64,
    /// The longest `TLS.expire`, seconds.
    pub max_lifetime: u64,
}

impl TimeBounds {
    /// 5 minutes of skew, 180 days of lifetime (the original's typical
    /// UserSigs are issued for 180 days).
    pub const DEFAULT: Self = Self {
        max_skew: 300,
        max_lifetime: 180 * 86_400,
    };

    /// Whether `claims` (already verified) keep within the bounds at
    /// `now_unix`.
    pub fn check(&self, claims: &UserSigClaims, now_unix: u64) -> Result<(), UserSigError> {
        if claims.time > now_unix.saturating_add(self.max_skew) {
            return Err(UserSigError::IssuedInTheFuture {
                time: claims.time,
                now: now_unix,
                max_skew: self.max_skew,
            });
        }
        if claims.expire > self.max_lifetime {
            return Err(UserSigError::LifetimeTooLong {
                expire: claims.expire,
                max_lifetime: self.max_lifetime,
            });
        }
        Ok(())
    }
}

impl Default for TimeBounds {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl UserSigError {
    /// The login error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed(_) => ErrorCode::USERSIG_MALFORMED,
            Self::WrongApp { .. } => ErrorCode::USERSIG_WRONG_APP,
            Self::WrongUser => ErrorCode::USERSIG_WRONG_USER,
            Self::BadSignature => ErrorCode::USERSIG_BAD_SIGNATURE,
            Self::Expired { .. } => ErrorCode::USERSIG_EXPIRED,
            Self::IssuedInTheFuture { .. } => ErrorCode::USERSIG_NOT_YET_VALID,
            Self::LifetimeTooLong { .. } => ErrorCode::USERSIG_LIFETIME_TOO_LONG,
        }
    }
}

fn content_to_sign(
    identifier: &str,
    sdk_app_id: u64,
    time: u64,
    expire: u64,
    userbuf_base64: Option<&str>,
) -> String {
    let mut content = format!(
        "TLS.identifier:{identifier}\nTLS.sdkappid:{sdk_app_id}\nTLS.time:{time}\nTLS.expire:{expire}\n"
    );
    if let Some(userbuf) = userbuf_base64 {
        content.push_str("TLS.userbuf:");
        content.push_str(userbuf);
        content.push('\n');
    }
    content
}

fn hmac_key(secret_key: &str) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret_key.as_bytes())
}

/// The `TLS.sig` field for these claims: base64 of the HMAC.
pub fn signature(
    secret_key: &str,
    identifier: &str,
    sdk_app_id: u64,
    time: u64,
    expire: u64,
    userbuf_base64: Option<&str>,
) -> String {
    let content = content_to_sign(identifier, sdk_app_id, time, expire, userbuf_base64);
    STANDARD.encode(ring::hmac::sign(&hmac_key(secret_key), content.as_bytes()))
}

/// Issues a UserSig, as the official generators do.
pub fn generate(
    sdk_app_id: u64,
    secret_key: &str,
    user_id: &str,
    expire: u64,
    now_unix: u64,
    userbuf: Option<&[u8]>,
) -> String {
    let userbuf_base64 = userbuf.map(|buffer| STANDARD.encode(buffer));
    let mut json = Map::new();
    json.insert("TLS.ver".into(), "2.0".into());
    json.insert("TLS.identifier".into(), user_id.into());
    json.insert("TLS.sdkappid".into(), sdk_app_id.into());
    json.insert("TLS.expire".into(), expire.into());
    json.insert("TLS.time".into(), now_unix.into());
    if let Some(userbuf) = &userbuf_base64 {
        json.insert("TLS.userbuf".into(), userbuf.clone().into());
    }
    json.insert(
        "TLS.sig".into(),
        signature(
            secret_key,
            user_id,
            sdk_app_id,
            now_unix,
            expire,
            userbuf_base64.as_deref(),
        )
        .into(),
    );
    let text = Value::Object(json).to_string();
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(text.as_bytes());
    let compressed = encoder.finish().unwrap_or_default();
    STANDARD
        .encode(compressed)
        .chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            other => other,
        })
        .collect()
}

/// A field that generators write as a number or as a string of digits.
fn number_field(json: &Map<String, Value>, name: &str) -> Result<u64, UserSigError> {
    match json.get(name) {
        Some(Value::Number(number)) => number.as_u64(),
        Some(Value::String(text)) => text.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| UserSigError::Malformed(format!("{name} missing or not a number")))
}

fn string_field<'a>(json: &'a Map<String, Value>, name: &str) -> Result<&'a str, UserSigError> {
    json.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| UserSigError::Malformed(format!("{name} missing or not a string")))
}

/// Decodes a UserSig's JSON without checking anything but its shape.
fn decode_json(user_sig: &str) -> Result<Map<String, Value>, UserSigError> {
    let standard: String = user_sig
        .trim()
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            other => other,
        })
        .collect();
    let compressed = STANDARD
        .decode(standard)
        .map_err(|error| UserSigError::Malformed(format!("not base64: {error}")))?;
    let mut text = Vec::new();
    ZlibDecoder::new(compressed.as_slice())
        .take(MAX_JSON_LEN + 1)
        .read_to_end(&mut text)
        .map_err(|error| UserSigError::Malformed(format!("not zlib: {error}")))?;
    if text.len() as u64 > MAX_JSON_LEN {
        return Err(UserSigError::Malformed("larger than 16 KiB".into()));
    }
    match serde_json::from_slice(&text) {
        Ok(Value::Object(json)) => Ok(json),
        Ok(_) => Err(UserSigError::Malformed("not a JSON object".into())),
        Err(error) => Err(UserSigError::Malformed(format!("not JSON: {error}"))),
    }
}

/// Checks `user_sig` for a login of `user_id` to `sdk_app_id` at `now_unix`.
///
/// In order: it must decode; name this app; name this user; carry a valid
/// HMAC under `secret_key` (compared in constant time); and not have expired.
pub fn verify(
    user_sig: &str,
    sdk_app_id: u64,
    secret_key: &str,
    user_id: &str,
    now_unix: u64,
) -> Result<UserSigClaims, UserSigError> {
    let json = decode_json(user_sig)?;
    let version = json.get("TLS.ver").and_then(|version| match version {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    });
    if version.as_deref() != Some("2.0") {
        return Err(UserSigError::Malformed(format!(
            "unsupported TLS.ver {version:?}"
        )));
    }
    let identifier = string_field(&json, "TLS.identifier")?;
    let found_app = number_field(&json, "TLS.sdkappid")?;
    let time = number_field(&json, "TLS.time")?;
    let expire = number_field(&json, "TLS.expire")?;
    let claimed_sig = string_field(&json, "TLS.sig")?;
    let userbuf_base64 = match json.get("TLS.userbuf") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.as_str()),
        Some(_) => {
            return Err(UserSigError::Malformed(
                "TLS.userbuf is not a string".into(),
            ));
        }
    };
    if found_app != sdk_app_id {
        return Err(UserSigError::WrongApp { found: found_app });
    }
    if identifier != user_id {
        return Err(UserSigError::WrongUser);
    }
    let claimed = STANDARD
        .decode(claimed_sig)
        .map_err(|_| UserSigError::Malformed("TLS.sig is not base64".into()))?;
    let content = content_to_sign(identifier, found_app, time, expire, userbuf_base64);
    ring::hmac::verify(&hmac_key(secret_key), content.as_bytes(), &claimed)
        .map_err(|_| UserSigError::BadSignature)?;
    let expired_at = time.saturating_add(expire);
    if expired_at <= now_unix {
        return Err(UserSigError::Expired {
            expired_at,
            now: now_unix,
        });
    }
    let userbuf = userbuf_base64
        .map(|text| STANDARD.decode(text))
        .transpose()
        .map_err(|_| UserSigError::Malformed("TLS.userbuf is not base64".into()))?;
    Ok(UserSigClaims {
        identifier: identifier.to_owned(),
        sdk_app_id: found_app,
        time,
        expire,
        userbuf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: u64 = 1_400_000_000;
    const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
    const ISSUED: u64 = 1_700_000_000;

    /// The fixture made by the official generator (tests/fixtures/usersig).
    fn official(field: &str) -> String {
        let text = include_str!("../../../tests/fixtures/usersig/official-tls-sig-api-v2.txt");
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{field}=")))
            .unwrap_or_else(|| panic!("fixture lacks {field}"))
            .to_owned()
    }

    #[test]
    fn the_official_vector_signature_matches() {
        assert_eq!(
            signature(KEY, "alice", APP, ISSUED, 86_400, None),
            "6GmjjJlI0ZfvdjC0qJyFjHknLqIVerI6rpJOgWxfg1k="
        );
    }

    #[test]
    fn official_generator_output_verifies_at_its_time() {
        let claims = verify(&official("sig"), APP, KEY, "alice", ISSUED + 10).unwrap();
        assert_eq!(claims.identifier, "alice");
        assert_eq!(
            (claims.time, claims.expire, claims.userbuf),
            (ISSUED, 86_400, None)
        );
        let with_buffer = verify(
            &official("sig_with_userbuf_abc"),
            APP,
            KEY,
            "alice",
            ISSUED + 10,
        )
        .unwrap();
        assert_eq!(with_buffer.userbuf.as_deref(), Some(&b"abc"[..]));
        // And it expires when it says.
        assert_eq!(
            verify(&official("sig"), APP, KEY, "alice", ISSUED + 86_400),
            Err(UserSigError::Expired {
                expired_at: ISSUED + 86_400,
                now: ISSUED + 86_400
            })
        );
    }

    #[test]
    fn our_signatures_verify_and_each_failure_has_its_code() {
        let sig = generate(APP, KEY, "bob", 3_600, ISSUED, None);
        assert!(verify(&sig, APP, KEY, "bob", ISSUED + 1).is_ok());
        let cases = [
            (
                verify(&sig, APP + 1, KEY, "bob", ISSUED),
                ErrorCode::USERSIG_WRONG_APP,
            ),
            (
                verify(&sig, APP, KEY, "alice", ISSUED),
                ErrorCode::USERSIG_WRONG_USER,
            ),
            (
                verify(&sig, APP, "another key", "bob", ISSUED),
                ErrorCode::USERSIG_BAD_SIGNATURE,
            ),
            (
                verify(&sig, APP, KEY, "bob", ISSUED + 3_600),
                ErrorCode::USERSIG_EXPIRED,
            ),
            (
                verify("not a sig", APP, KEY, "bob", ISSUED),
                ErrorCode::USERSIG_MALFORMED,
            ),
            (
                verify("", APP, KEY, "bob", ISSUED),
                ErrorCode::USERSIG_MALFORMED,
            ),
        ];
        for (result, code) in cases {
            assert_eq!(result.map_err(|error| error.code()), Err(code));
        }
    }

    #[test]
    fn tampered_content_fails_the_signature() {
        // Re-encode the official JSON with a longer expiry but the old TLS.sig.
        let mut json = decode_json(&official("sig")).unwrap();
        json.insert("TLS.expire".into(), Value::from(999_999_999_u64));
        let text = Value::Object(json).to_string();
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(text.as_bytes()).unwrap();
        let forged: String = STANDARD
            .encode(encoder.finish().unwrap())
            .replace('+', "*")
            .replace('/', "-")
            .replace('=', "_");
        assert_eq!(
            verify(&forged, APP, KEY, "alice", ISSUED),
            Err(UserSigError::BadSignature)
        );
    }

    #[test]
    fn numbers_written_as_strings_are_accepted() {
        let mut json = decode_json(&official("sig")).unwrap();
        for field in ["TLS.sdkappid", "TLS.time", "TLS.expire"] {
            let number = json[field].to_string();
            json.insert(field.into(), Value::String(number));
        }
        let text = Value::Object(json).to_string();
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(text.as_bytes()).unwrap();
        let sig = STANDARD
            .encode(encoder.finish().unwrap())
            .replace('+', "*")
            .replace('/', "-")
            .replace('=', "_");
        assert!(verify(&sig, APP, KEY, "alice", ISSUED).is_ok());
    }

    #[test]
    fn a_zip_bomb_is_malformed_not_a_hang() {
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(&vec![b' '; 10 * 1024 * 1024]).unwrap();
        let bomb = STANDARD.encode(encoder.finish().unwrap());
        assert!(matches!(
            verify(&bomb, APP, KEY, "alice", ISSUED),
            Err(UserSigError::Malformed(_))
        ));
    }

    #[test]
    fn time_bounds_refuse_the_far_future_and_the_never_expiring() {
        let bounds = TimeBounds::DEFAULT;
        let now = ISSUED;
        let claims = |time: u64, expire: u64| {
            let sig = generate(APP, KEY, "alice", expire, time, None);
            verify(&sig, APP, KEY, "alice", now).unwrap()
        };
        assert_eq!(bounds.check(&claims(now, 180 * 86_400), now), Ok(()));
        assert_eq!(
            bounds.check(&claims(now + 300, 86_400), now),
            Ok(()),
            "clock skew"
        );
        let future = bounds.check(&claims(now + 10 * 365 * 86_400, 86_400), now);
        assert!(
            matches!(future, Err(UserSigError::IssuedInTheFuture { .. })),
            "{future:?}"
        );
        assert_eq!(future.unwrap_err().code(), ErrorCode::USERSIG_NOT_YET_VALID);
        let forever = bounds.check(&claims(now, u64::MAX), now);
        assert_eq!(
            forever.unwrap_err().code(),
            ErrorCode::USERSIG_LIFETIME_TOO_LONG
        );
    }
}
