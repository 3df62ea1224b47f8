//! Development helpers (feature `dev`, never on by default): what the
//! original's demos ship as `GenerateTestUserSig`, and a way to find a
//! development server started on this machine.
//!
//! A secret key must never ship inside an application: in production the
//! application's backend issues UserSigs. These helpers exist so that a
//! first call, a test or a demo needs no backend.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use calling_api::{CallingError, CallingResult, ErrorCode, UserId};
use signaling_tls::CertFingerprint;

use crate::ClientOptions;

/// A UserSig for `user_id` in app `sdk_app_id`, signed with the app's
/// `secret_key` and valid for `valid_for` from now: the original's
/// `GenerateTestUserSig`. For development only (see the [module docs](self)).
pub fn generate_test_user_sig(
    sdk_app_id: u32,
    secret_key: &str,
    user_id: &str,
    valid_for: Duration,
) -> CallingResult<String> {
    UserId::new(user_id)?;
    if secret_key.is_empty() {
        return Err(CallingError::with_desc(
            ErrorCode::INVALID_PARAMETER,
            "the secret key is empty",
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    Ok(calling_usersig::generate(
        u64::from(sdk_app_id),
        secret_key,
        user_id,
        valid_for.as_secs(),
        now,
        None,
    ))
}

/// A development server on this machine, as the `server.json` in its data
/// directory describes it (address, certificate fingerprint, development
/// app): everything a client needs to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct DevServer {
    /// Where to connect (`host:port`).
    pub address: String,
    /// The certificate to trust.
    pub fingerprint: CertFingerprint,
    /// The development app.
    pub sdk_app_id: u32,
    secret_key: String,
}

impl std::fmt::Debug for DevServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevServer")
            .field("address", &self.address)
            .field("fingerprint", &self.fingerprint)
            .field("sdk_app_id", &self.sdk_app_id)
            .finish_non_exhaustive()
    }
}

impl DevServer {
    /// Reads `server.json` from a development server's data directory
    /// (`./opencalling-data` unless the server was told otherwise). An
    /// error says what is missing: no such file (the server never ran
    /// there), or a server that is not in development mode.
    pub fn from_data_dir(data_dir: impl AsRef<Path>) -> CallingResult<Self> {
        let path = data_dir.as_ref().join("server.json");
        let invalid = |why: String| {
            CallingError::with_desc(
                ErrorCode::INVALID_PARAMETER,
                format!("{}: {why}", path.display()),
            )
        };
        let text = std::fs::read_to_string(&path).map_err(|error| {
            invalid(format!(
                "{error} (has a server run with this data directory?)"
            ))
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|error| invalid(error.to_string()))?;
        let field = |name: &str| {
            json.get(name)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| invalid(format!("no {name:?}")))
        };
        let secret_key = field("secret_key")
            .map_err(|_| {
                invalid("not a development server: it keeps its apps' keys to itself".into())
            })?
            .to_owned();
        Ok(Self {
            address: field("address")?.to_owned(),
            fingerprint: field("fingerprint")?
                .parse()
                .map_err(|error| invalid(format!("fingerprint: {error}")))?,
            sdk_app_id: json
                .get("sdk_app_id")
                .and_then(serde_json::Value::as_u64)
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| invalid("no \"sdk_app_id\"".into()))?,
            secret_key,
        })
    }

    /// Options that reach and trust this server (default audio devices).
    pub fn options(&self) -> ClientOptions {
        ClientOptions::development(self.address.clone(), self.fingerprint)
    }

    /// A UserSig for `user_id`, valid for a day.
    pub fn user_sig(&self, user_id: &str) -> CallingResult<String> {
        generate_test_user_sig(
            self.sdk_app_id,
            &self.secret_key,
            user_id,
            Duration::from_secs(86_400),
        )
    }
}
