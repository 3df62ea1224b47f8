//! Development certificates a browser accepts without a CA. WebTransport's
//! `serverCertificateHashes` takes only an ECDSA P-256 certificate valid
//! for at most 14 days, named by the SHA-256 of its DER. A development
//! server cannot keep one such certificate, so it rotates them: each is made
//! one period before it is served and published from then on, so a page
//! that learned the two published hashes keeps connecting across a
//! rotation. Sans-IO apart from [`BrowserCertificates::load`] and
//! [`BrowserCertificates::save`]: every decision takes `now`.
//!
//! [`CertificateChooser`] presents them: the browser certificate to a client
//! that offers WebTransport's ALPN (`h3`), the server's own (the one native
//! clients pin, which never rotates) to every other.

use std::fs;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::{CertFingerprint, ServerIdentity, TlsError, provider, write_private};

/// How long a browser certificate is valid: browsers refuse more than 14
/// days; a day less leaves room for a client's clock.
pub const BROWSER_CERT_VALIDITY: Duration = Duration::from_secs(13 * 86_400);

/// How long each browser certificate is served before the next one takes
/// over. Made one period before it is served, a certificate is served
/// until 12 days after it was made, within its validity.
pub const BROWSER_CERT_SERVED_FOR: Duration = Duration::from_secs(6 * 86_400);

/// How far a certificate's start of validity is set back, for clients whose
/// clock is behind.
const BACKDATED: Duration = Duration::from_secs(3_600);

/// The ALPN a WebTransport client offers (HTTP/3).
pub const WEBTRANSPORT_ALPN: &[u8] = b"h3";

const FILE_PREFIX: &str = "browser-";

/// One browser certificate and the time it starts being served.
struct Dated {
    identity: ServerIdentity,
    served_from: SystemTime,
    not_after: SystemTime,
}

impl Dated {
    /// A fresh ECDSA P-256 certificate for `names`, valid from a little
    /// before `now` for [`BROWSER_CERT_VALIDITY`], served from `served_from`.
    fn make(names: &[String], now: SystemTime, served_from: SystemTime) -> Result<Self, TlsError> {
        let not_before = whole_seconds(now.checked_sub(BACKDATED).unwrap_or(now));
        let not_after = not_before + BROWSER_CERT_VALIDITY;
        let mut params = rcgen::CertificateParams::new(names.to_vec())
            .map_err(|error| TlsError::Certificate(error.to_string()))?;
        params.not_before = offset_date_time(not_before)?;
        params.not_after = offset_date_time(not_after)?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|error| TlsError::Certificate(error.to_string()))?;
        let cert = params
            .self_signed(&key)
            .map_err(|error| TlsError::Certificate(error.to_string()))?;
        Ok(Self {
            identity: ServerIdentity {
                cert_chain: vec![cert.der().clone()],
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            },
            served_from: whole_seconds(served_from),
            not_after,
        })
    }

    fn served_until(&self) -> SystemTime {
        self.served_from + BROWSER_CERT_SERVED_FOR
    }

    /// Valid through all of its serving period.
    fn fits(&self) -> bool {
        self.served_until() <= self.not_after
    }

    fn file_stem(&self) -> String {
        format!(
            "{FILE_PREFIX}{}-{}",
            unix_secs(self.served_from),
            unix_secs(self.not_after)
        )
    }
}

/// The browser certificates of a development server: the one served now
/// and the next, both published, so that a page holding the two hashes
/// keeps connecting when the next one takes over.
pub struct BrowserCertificates {
    names: Vec<String>,
    current: Dated,
    next: Dated,
}

impl std::fmt::Debug for BrowserCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys never reach a log line.
        f.debug_struct("BrowserCertificates")
            .field("hashes", &self.hashes())
            .field("rotates_at", &self.rotates_at())
            .finish_non_exhaustive()
    }
}

impl BrowserCertificates {
    /// Fresh certificates for `names` at `now`: one served from now, the
    /// next from one period later.
    pub fn new(names: &[String], now: SystemTime) -> Result<Self, TlsError> {
        let current = Dated::make(names, now, now)?;
        let next = Dated::make(names, now, current.served_until())?;
        Ok(Self {
            names: names.to_vec(),
            current,
            next,
        })
    }

    /// The certificates kept in `dir` (by [`save`](Self::save)), rotated to
    /// `now`; fresh ones when there are none still to serve (a first start,
    /// or a server stopped for longer than a period).
    pub fn load(dir: &Path, names: &[String], now: SystemTime) -> Result<Self, TlsError> {
        let mut kept: Vec<Dated> = Vec::new();
        if dir.exists() {
            for entry in fs::read_dir(dir)? {
                let path = entry?.path();
                let Some(stem) = path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .and_then(|name| name.strip_suffix(".der"))
                else {
                    continue;
                };
                let Some((served_from, not_after)) = parse_stem(stem) else {
                    continue;
                };
                let key_path = dir.join(format!("{stem}.key"));
                let (Ok(cert), Ok(key)) = (fs::read(&path), fs::read(&key_path)) else {
                    continue;
                };
                kept.push(Dated {
                    identity: ServerIdentity {
                        cert_chain: vec![CertificateDer::from(cert)],
                        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
                    },
                    served_from,
                    not_after,
                });
            }
        }
        kept.retain(|dated| dated.fits() && dated.served_until() > now);
        kept.sort_by_key(|dated| dated.served_from);
        let mut kept = kept.into_iter();
        let Some(current) = kept.next() else {
            return Self::new(names, now);
        };
        let next = match kept.next() {
            Some(next) if next.served_from == current.served_until() => next,
            _ => Dated::make(names, now, current.served_until())?,
        };
        let mut certificates = Self {
            names: names.to_vec(),
            current,
            next,
        };
        certificates.rotate(now)?;
        Ok(certificates)
    }

    /// Writes both certificates into `dir` (keys readable by the owner
    /// only) and removes the ones no longer served.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        fs::create_dir_all(dir)?;
        let keep = [self.current.file_stem(), self.next.file_stem()];
        for dated in [&self.current, &self.next] {
            let stem = dated.file_stem();
            write_private(
                &dir.join(format!("{stem}.key")),
                dated.identity.key.secret_der(),
            )?;
            fs::write(dir.join(format!("{stem}.der")), dated.identity.leaf())?;
        }
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            let stem = name
                .strip_suffix(".der")
                .or_else(|| name.strip_suffix(".key"));
            if let Some(stem) = stem
                && parse_stem(stem).is_some()
                && !keep.iter().any(|kept| kept == stem)
            {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Moves on to the next certificate once the current one's period is
    /// over (making a new next); `true` when anything changed.
    pub fn rotate(&mut self, now: SystemTime) -> Result<bool, TlsError> {
        let mut rotated = false;
        while now >= self.current.served_until() {
            rotated = true;
            let served_from = self.next.served_until();
            let after = Dated::make(&self.names, now, served_from)?;
            self.current = std::mem::replace(&mut self.next, after);
            if now >= self.current.served_until() {
                // Stopped (or suspended) past the next one's period too:
                // start over from now.
                *self = Self::new(&self.names, now)?;
            }
        }
        Ok(rotated)
    }

    /// When [`rotate`](Self::rotate) next has something to do.
    pub fn rotates_at(&self) -> SystemTime {
        self.current.served_until()
    }

    /// The certificate to present now.
    pub fn current(&self) -> &ServerIdentity {
        &self.current.identity
    }

    /// The SHA-256 hashes a page passes as `serverCertificateHashes`: the
    /// current certificate's and the next one's.
    pub fn hashes(&self) -> [CertFingerprint; 2] {
        [
            self.current.identity.fingerprint(),
            self.next.identity.fingerprint(),
        ]
    }

    /// When the current certificate's validity ends.
    pub fn current_expires(&self) -> SystemTime {
        self.current.not_after
    }
}

/// Chooses the certificate a listener presents: the server's own, or to a
/// client that offers [`WEBTRANSPORT_ALPN`] the browser certificate, once
/// one is set. Shared by the listener's configuration and whoever rotates.
#[derive(Debug)]
pub struct CertificateChooser {
    own: Arc<CertifiedKey>,
    browser: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertificateChooser {
    /// Presents `own` to every client until a browser certificate is set.
    pub fn new(own: &ServerIdentity) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            own: Arc::new(certified(own)?),
            browser: RwLock::new(None),
        }))
    }

    /// From now on presents `identity` to WebTransport clients.
    pub fn serve_to_browsers(&self, identity: &ServerIdentity) -> Result<(), TlsError> {
        let key = Arc::new(certified(identity)?);
        *self.browser.write().unwrap_or_else(PoisonError::into_inner) = Some(key);
        Ok(())
    }

    /// The TLS 1.3 server configuration (ring) that presents what this
    /// chooses, without ALPN: the listener adds its own.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        Ok(rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>))
    }
}

impl ResolvesServerCert for CertificateChooser {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let wants_webtransport = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|alpn| alpn == WEBTRANSPORT_ALPN));
        if wants_webtransport
            && let Some(browser) = self
                .browser
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
        {
            return Some(Arc::clone(browser));
        }
        Some(Arc::clone(&self.own))
    }
}

fn certified(identity: &ServerIdentity) -> Result<CertifiedKey, TlsError> {
    let (chain, key) = identity.clone_parts();
    Ok(CertifiedKey::from_der(chain, key, &provider())?)
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn whole_seconds(time: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_secs(time))
}

fn offset_date_time(time: SystemTime) -> Result<time::OffsetDateTime, TlsError> {
    let secs = i64::try_from(unix_secs(time))
        .map_err(|_| TlsError::Certificate("a date past the year 2^63".into()))?;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|error| TlsError::Certificate(error.to_string()))
}

/// `browser-<served from>-<not after>`, both in Unix seconds.
fn parse_stem(stem: &str) -> Option<(SystemTime, SystemTime)> {
    let (served_from, not_after) = stem.strip_prefix(FILE_PREFIX)?.split_once('-')?;
    let at = |secs: &str| Some(UNIX_EPOCH + Duration::from_secs(secs.parse().ok()?));
    Some((at(served_from)?, at(not_after)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn names() -> Vec<String> {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    }

    fn start() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    /// Whether the certificate verifies as a server certificate at `at`,
    /// trusted as its own anchor (its dates and its signature checked).
    fn valid_at(identity: &ServerIdentity, at: SystemTime) -> Result<(), webpki::Error> {
        let der = CertificateDer::from(identity.leaf().to_vec());
        let anchor = webpki::anchor_from_trusted_cert(&der)?;
        let cert = webpki::EndEntityCert::try_from(&der)?;
        let time =
            rustls::pki_types::UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap());
        cert.verify_for_usage(
            &[webpki::ring::ECDSA_P256_SHA256],
            &[anchor],
            &[],
            time,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map(drop)
    }

    #[test]
    fn a_browser_certificate_is_ecdsa_p256_and_valid_for_at_most_14_days() {
        let now = start();
        let certificates = BrowserCertificates::new(&names(), now).unwrap();
        let current = certificates.current();
        // Only a P-256 key verifies under ECDSA_P256_SHA256.
        valid_at(current, now).unwrap();
        valid_at(current, now + 12 * DAY).unwrap();
        assert!(
            valid_at(current, now + 14 * DAY).is_err(),
            "valid past 14 days"
        );
        assert!(valid_at(current, now - Duration::from_secs(7_200)).is_err());
        assert!(
            certificates.current_expires() <= now + BROWSER_CERT_VALIDITY,
            "validity as said"
        );
        assert_eq!(certificates.hashes()[0], current.fingerprint());
    }

    #[test]
    fn rotation_serves_the_published_next_one_and_publishes_a_new_next() {
        let now = start();
        let mut certificates = BrowserCertificates::new(&names(), now).unwrap();
        let [first, second] = certificates.hashes();
        assert_ne!(first, second);
        assert_eq!(certificates.rotates_at(), now + BROWSER_CERT_SERVED_FOR);
        assert!(
            !certificates
                .rotate(now + BROWSER_CERT_SERVED_FOR - DAY)
                .unwrap()
        );
        assert_eq!(certificates.hashes(), [first, second]);

        let later = certificates.rotates_at();
        assert!(certificates.rotate(later).unwrap());
        let [now_served, third] = certificates.hashes();
        // A page that learned [first, second] still finds what is served.
        assert_eq!(now_served, second);
        assert!(third != first && third != second);
        // Everything served stays valid through its period.
        for _ in 0..5 {
            let at = certificates.rotates_at();
            valid_at(certificates.current(), at - Duration::from_secs(1)).unwrap();
            let published = certificates.hashes()[1];
            certificates.rotate(at).unwrap();
            assert_eq!(certificates.hashes()[0], published);
            valid_at(certificates.current(), at).unwrap();
        }
    }

    #[test]
    fn a_server_stopped_for_weeks_starts_over() {
        let now = start();
        let mut certificates = BrowserCertificates::new(&names(), now).unwrap();
        let old = certificates.hashes();
        let much_later = now + 30 * DAY;
        assert!(certificates.rotate(much_later).unwrap());
        let fresh = certificates.hashes();
        assert!(fresh.iter().all(|hash| !old.contains(hash)));
        valid_at(certificates.current(), much_later).unwrap();
        assert_eq!(
            certificates.rotates_at(),
            whole_seconds(much_later) + BROWSER_CERT_SERVED_FOR
        );
    }

    #[test]
    fn saved_certificates_survive_a_restart_and_rotate_on_load() {
        let dir = std::env::temp_dir().join(format!("browser-certs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let now = start();
        let certificates = BrowserCertificates::load(&dir, &names(), now).unwrap();
        certificates.save(&dir).unwrap();
        let restarted = BrowserCertificates::load(&dir, &names(), now + DAY).unwrap();
        assert_eq!(restarted.hashes(), certificates.hashes());
        assert_eq!(restarted.rotates_at(), certificates.rotates_at());

        // Restarted after the rotation: the saved next one is served.
        let after = certificates.rotates_at() + DAY;
        let rotated = BrowserCertificates::load(&dir, &names(), after).unwrap();
        assert_eq!(rotated.hashes()[0], certificates.hashes()[1]);
        rotated.save(&dir).unwrap();
        let files = fs::read_dir(&dir).unwrap().count();
        assert_eq!(files, 4, "two certificates and their keys, the old removed");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|ext| ext == "key") {
                    let mode = fs::metadata(&path).unwrap().permissions().mode();
                    assert_eq!(mode & 0o077, 0, "{} readable by others", path.display());
                }
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A TLS handshake in memory: which certificate does a client offering
    /// `alpn` see?
    fn presented(chooser: &Arc<CertificateChooser>, alpn: &[u8]) -> CertFingerprint {
        let mut server_config = chooser.server_config().unwrap();
        server_config.alpn_protocols = vec![b"opencalling/1".to_vec(), WEBTRANSPORT_ALPN.to_vec()];
        let seen = Arc::new(std::sync::Mutex::new(None));
        let mut client_config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Recorder(Arc::clone(&seen))))
            .with_no_client_auth();
        client_config.alpn_protocols = vec![alpn.to_vec()];
        let mut client =
            rustls::ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap())
                .unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
        for _ in 0..10 {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).unwrap();
            server.read_tls(&mut bytes.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut bytes = Vec::new();
            server.write_tls(&mut bytes).unwrap();
            client.read_tls(&mut bytes.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() {
                break;
            }
        }
        let seen = *seen.lock().unwrap();
        seen.expect("the client saw a certificate")
    }

    /// Accepts any certificate, noting its fingerprint.
    #[derive(Debug)]
    struct Recorder(Arc<std::sync::Mutex<Option<CertFingerprint>>>);

    impl rustls::client::danger::ServerCertVerifier for Recorder {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            *self.0.lock().unwrap() = Some(CertFingerprint::of(end_entity));
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }

        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    #[test]
    fn webtransport_clients_get_the_browser_certificate_and_others_the_own() {
        let own = ServerIdentity::self_signed(&names()).unwrap();
        let chooser = CertificateChooser::new(&own).unwrap();
        assert_eq!(presented(&chooser, WEBTRANSPORT_ALPN), own.fingerprint());
        let mut browser = BrowserCertificates::new(&names(), SystemTime::now()).unwrap();
        chooser.serve_to_browsers(browser.current()).unwrap();
        assert_eq!(presented(&chooser, WEBTRANSPORT_ALPN), browser.hashes()[0]);
        assert_eq!(presented(&chooser, b"opencalling/1"), own.fingerprint());
        // A rotation is served from the next handshake on.
        let at = browser.rotates_at();
        browser.rotate(at).unwrap();
        chooser.serve_to_browsers(browser.current()).unwrap();
        assert_eq!(presented(&chooser, WEBTRANSPORT_ALPN), browser.hashes()[0]);
    }
}
