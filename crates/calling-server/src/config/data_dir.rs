//! What development mode keeps in the data directory: the development app's
//! key and the stateless-reset key seed, each made once and reused.

use std::fs;
use std::path::Path;

use super::AppCredentials;
use crate::secret::{SecretKey, hex};

/// The sdkAppId of the development app.
pub const DEVELOPMENT_SDK_APP_ID: u32 = 1_400_000_000;

const DEV_APP_FILE: &str = "development-app.key";
const RESET_KEY_FILE: &str = "stateless-reset.key";

/// The development app kept in `data_dir`: its key is made once, at random,
/// and reused so that UserSigs issued for it stay valid across restarts.
pub fn development_app(data_dir: &Path) -> std::io::Result<AppCredentials> {
    let secret = load_or_create_secret(&data_dir.join(DEV_APP_FILE))?;
    Ok(AppCredentials {
        sdk_app_id: DEVELOPMENT_SDK_APP_ID,
        secret_key: SecretKey::new(hex(&secret)),
    })
}

/// The stateless-reset key seed kept in `data_dir`.
pub fn reset_key(data_dir: &Path) -> std::io::Result<[u8; 32]> {
    load_or_create_secret(&data_dir.join(RESET_KEY_FILE))
}

fn load_or_create_secret(path: &Path) -> std::io::Result<[u8; 32]> {
    if let Ok(bytes) = fs::read(path)
        && let Ok(secret) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(secret);
    }
    let mut secret = [0; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| std::io::Error::other("the system random generator failed"))?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    signaling_tls::write_private(path, &secret)?;
    Ok(secret)
}

/// The development app already kept in `data_dir`, if a server made one
/// there; unlike [`development_app`], never makes a new one.
pub fn existing_development_app(data_dir: &Path) -> Option<AppCredentials> {
    let bytes = fs::read(data_dir.join(DEV_APP_FILE)).ok()?;
    let secret = <[u8; 32]>::try_from(bytes.as_slice()).ok()?;
    Some(AppCredentials {
        sdk_app_id: DEVELOPMENT_SDK_APP_ID,
        secret_key: SecretKey::new(hex(&secret)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_secrets_are_made_once() {
        let dir =
            std::env::temp_dir().join(format!("opencalling-config-dev-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = development_app(&dir).unwrap();
        let second = development_app(&dir).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.secret_key.expose().len(), 64);
        assert_eq!(existing_development_app(&dir), Some(first));
        assert_eq!(reset_key(&dir).unwrap(), reset_key(&dir).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }
}
