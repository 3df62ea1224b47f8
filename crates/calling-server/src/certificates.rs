//! The certificates the server presents: its own (PEM files, or the
//! development certificate kept in the data directory, which native clients
//! pin) and, in development mode, the short-lived browser certificates that
//! WebTransport accepts by hash, rotated on the wall clock and published in
//! `server.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use signaling_tls::{BrowserCertificates, CertFingerprint, CertificateChooser, ServerIdentity};
use tracing::{info, warn};

use crate::ServerError;
use crate::config::{self, Banner, ServerConfig, TlsSource};

/// The names a development certificate is made for.
const DEVELOPMENT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The browser certificates' directory inside the data directory.
const BROWSER_DIR: &str = "browser-certificates";

/// How often the rotation task looks at the wall clock at least: a
/// suspended machine's timers do not count the time it slept.
const RECHECK: Duration = Duration::from_secs(3_600);

/// What [`load`] found or made.
pub(crate) struct Certificates {
    /// The server's own certificate.
    pub(crate) identity: ServerIdentity,
    /// What the QUIC listener presents to each client.
    pub(crate) chooser: Arc<CertificateChooser>,
    /// In development mode, the browser certificates.
    pub(crate) browser: Option<BrowserCertificates>,
}

impl Certificates {
    /// The hashes a page passes as `serverCertificateHashes`, in
    /// development mode.
    pub(crate) fn browser_hashes(&self) -> Option<[CertFingerprint; 2]> {
        self.browser.as_ref().map(BrowserCertificates::hashes)
    }
}

/// The certificate and key the configuration names, or the development
/// certificate (made once in the data directory) with the browser
/// certificates beside it.
pub(crate) fn load(config: &ServerConfig) -> Result<Certificates, ServerError> {
    let names = DEVELOPMENT_NAMES.map(str::to_owned);
    let (identity, browser) = match &config.tls {
        TlsSource::SelfSigned => {
            let identity = ServerIdentity::load_or_create_self_signed(&config.data_dir, &names)?;
            let dir = config.data_dir.join(BROWSER_DIR);
            let browser = BrowserCertificates::load(&dir, &names, SystemTime::now())?;
            browser.save(&dir)?;
            (identity, Some(browser))
        }
        TlsSource::PemFiles { cert, key } => (ServerIdentity::from_pem_files(cert, key)?, None),
    };
    let chooser = CertificateChooser::new(&identity)?;
    if let Some(browser) = &browser {
        chooser.serve_to_browsers(browser.current())?;
    }
    Ok(Certificates {
        identity,
        chooser,
        browser,
    })
}

/// Rotates the browser certificates when due, for as long as the server
/// runs: the listener presents the new one from the next handshake, and
/// `server.json` publishes the new pair.
pub(crate) async fn rotate(
    mut browser: BrowserCertificates,
    chooser: Arc<CertificateChooser>,
    data_dir: PathBuf,
    mut banner: Banner,
) {
    loop {
        let due = browser
            .rotates_at()
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::time::sleep(due.min(RECHECK)).await;
        match browser.rotate(SystemTime::now()) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                warn!(%error, "could not make the next browser certificate: trying again in an hour");
                tokio::time::sleep(RECHECK).await;
                continue;
            }
        }
        if let Err(error) = publish(&browser, &chooser, &data_dir, &mut banner) {
            warn!(%error, "browser certificate rotated, but not saved or published");
        }
        let [served, next] = browser.hashes();
        info!(%served, %next, "browser certificate rotated");
    }
}

fn publish(
    browser: &BrowserCertificates,
    chooser: &CertificateChooser,
    data_dir: &Path,
    banner: &mut Banner,
) -> Result<(), ServerError> {
    chooser.serve_to_browsers(browser.current())?;
    browser.save(&data_dir.join(BROWSER_DIR))?;
    banner.browser_certificate_hashes = Some(browser.hashes());
    config::write_banner(data_dir, banner).map_err(|source| ServerError::DataDir {
        path: data_dir.to_owned(),
        source,
    })
}
