//! `server.json`: where the running server is and how to trust it, for
//! scripts and development clients.

use std::net::SocketAddr;
use std::path::Path;

use super::AppCredentials;

/// The file in the data directory that says, for scripts and development
/// clients, where the running server is and how to trust it.
pub const BANNER_FILE: &str = "server.json";

/// What [`BANNER_FILE`] holds.
#[derive(Debug, Clone)]
pub struct Banner {
    /// The address the server listens on.
    pub listen: SocketAddr,
    /// Its certificate's fingerprint.
    pub fingerprint: signaling_tls::CertFingerprint,
    /// The development app's sdkAppId, or the first configured app's.
    pub sdk_app_id: Option<u32>,
    /// The development app, whose key a development client signs with;
    /// `None` outside development mode (a real app's key is never written).
    pub development_app: Option<AppCredentials>,
    /// In development mode, the SHA-256 hashes of the browser certificate
    /// served now and of the next one, for WebTransport's
    /// `serverCertificateHashes`.
    pub browser_certificate_hashes: Option<[signaling_tls::CertFingerprint; 2]>,
}

/// Writes [`BANNER_FILE`] (readable by the owner only: in development mode
/// it holds the development app's key, as the key file beside it does).
///
/// `address` is where a client on this machine connects: the listening
/// address, with an unspecified IP replaced by loopback.
pub fn write_banner(data_dir: &Path, banner: &Banner) -> std::io::Result<()> {
    let mut address = banner.listen;
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        });
    }
    let mut json = serde_json::json!({
        "listen": banner.listen.to_string(),
        "address": address.to_string(),
        "fingerprint": banner.fingerprint.to_string(),
        "sdk_app_id": banner.sdk_app_id,
        "development": banner.development_app.is_some(),
    });
    if let Some(app) = &banner.development_app {
        json["secret_key"] = app.secret_key.expose().into();
    }
    if let Some(hashes) = banner.browser_certificate_hashes {
        json["browser_certificate_hashes"] = hashes.map(|hash| hash.to_string()).to_vec().into();
    }
    let text = serde_json::to_string_pretty(&json).map_err(std::io::Error::other)?;
    signaling_tls::write_private(&data_dir.join(BANNER_FILE), text.as_bytes())
}
