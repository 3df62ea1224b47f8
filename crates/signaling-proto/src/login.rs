//! The server's first gate: is the first frame of a connection a login this
//! server accepts? One sans-IO check, used by the real server and by the
//! simulation (`sim`) alike, so that both test the same rules.
//!
//! The checks, in order: another request before the login
//! (`NOT_LOGGED_IN`), the protocol version (readable by any version, see
//! [`handshake_version`]; [`OLDEST_PROTOCOL_VERSION`] to
//! [`PROTOCOL_VERSION`] are served), that the frame is a
//! [`ClientMessage::Login`] or, from version 2, a [`ClientMessage::Resume`]
//! (`PROTOCOL_ERROR`) with a valid user id (`INVALID_USER_ID`), that the app
//! is served here, the UserSig's length, then the UserSig itself, which only
//! the deployment can judge ([`Credentials`]). A refusal carries its code and text and becomes the
//! [`ServerMessage::LoginResult`] the server answers with before closing.

use calling_api::{DeviceId, ErrorCode, UserId};

use crate::frame::{FrameError, decode_payload, handshake_version};
use crate::message::{
    ClientMessage, MAX_USER_SIG_LEN, MediaEncryption, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION,
    ServerMessage, SessionToken, UserSig,
};

/// What a deployment knows about its apps and their UserSigs.
pub trait Credentials {
    /// Whether app `sdk_app_id` is served here.
    fn serves_app(&self, sdk_app_id: u32) -> bool;

    /// Whether `user_sig` proves `user` for the served app `sdk_app_id`
    /// (signature, expiry), or why not.
    fn verify(
        &self,
        sdk_app_id: u32,
        user: &UserId,
        user_sig: &UserSig,
    ) -> Result<(), LoginRefusal>;
}

/// An accepted login: who, for which app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedLogin {
    /// The application.
    pub sdk_app_id: u32,
    /// The user the UserSig proved.
    pub user: UserId,
    /// The protocol version the session speaks: the client's.
    pub protocol_version: u16,
    /// The device the login names (version 5); `None` for a resume and for
    /// older clients.
    pub device: Option<DeviceId>,
    /// How the login's device encrypts audio end to end (version 7);
    /// `None` for a resume (the session keeps its own) and older clients.
    pub media_encryption: MediaEncryption,
    /// For a [`ClientMessage::Resume`]: the session it claims. Whether that
    /// session exists and the token is its own is for whoever keeps
    /// sessions to judge.
    pub resume: Option<ResumeClaim>,
}

/// What a [`ClientMessage::Resume`] claims besides its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeClaim {
    /// The session's token, as the client last got it.
    pub token: SessionToken,
    /// The server's numbered messages the client has received.
    pub received: u64,
}

/// Why a login is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("login refused ({code}): {message}")]
pub struct LoginRefusal {
    /// Stable error number, sent to the client.
    pub code: ErrorCode,
    /// Human description, sent to the client.
    pub message: String,
}

impl LoginRefusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The answer the client gets before the server closes.
    pub fn reply(&self) -> ServerMessage {
        ServerMessage::LoginResult {
            protocol_version: PROTOCOL_VERSION,
            code: self.code,
            message: self.message.clone(),
        }
    }
}

/// The account (app, user) a login or resume frame names, read without
/// checking anything: the server's throttle keys failed logins on it
/// before the check. `None` for any other payload.
pub fn login_account(payload: &[u8]) -> Option<(u32, UserId)> {
    match decode_first_frame(payload).ok()? {
        ClientMessage::Login {
            sdk_app_id,
            user_id,
            ..
        }
        | ClientMessage::Resume {
            sdk_app_id,
            user_id,
            ..
        } => Some((sdk_app_id, user_id)),
        _ => None,
    }
}

/// A connection's first frame as a message, in the login layout of its
/// version: version 5 appended `device_id` to `Login`, version 7
/// `media_encryption`, so the login of an older client is read with the
/// fields its version has, and names no device (below 5) and encrypts
/// nothing (below 7).
pub fn decode_first_frame(payload: &[u8]) -> Result<ClientMessage, FrameError> {
    let error = match decode_payload::<ClientMessage>(payload) {
        Ok(message) => return Ok(message),
        Err(error) => error,
    };
    let older = match handshake_version(payload) {
        Ok(version) if version < 5 => decode_payload::<LoginBeforeDevices>(payload).map(
            |LoginBeforeDevices::Login {
                 protocol_version,
                 sdk_app_id,
                 user_id,
                 user_sig,
             }| (protocol_version, sdk_app_id, user_id, user_sig, None),
        ),
        Ok(version) if version < 7 => decode_payload::<LoginBeforeEncryption>(payload).map(
            |LoginBeforeEncryption::Login {
                 protocol_version,
                 sdk_app_id,
                 user_id,
                 user_sig,
                 device_id,
             }| (protocol_version, sdk_app_id, user_id, user_sig, device_id),
        ),
        _ => return Err(error),
    };
    match older {
        Ok((protocol_version, sdk_app_id, user_id, user_sig, device_id)) => {
            Ok(ClientMessage::Login {
                protocol_version,
                sdk_app_id,
                user_id,
                user_sig,
                device_id,
                media_encryption: MediaEncryption::None,
            })
        }
        Err(_) => Err(error),
    }
}

/// `ClientMessage::Login` as versions 5 and 6 lay it out.
#[derive(serde::Deserialize)]
enum LoginBeforeEncryption {
    Login {
        protocol_version: u16,
        sdk_app_id: u32,
        user_id: UserId,
        user_sig: UserSig,
        device_id: Option<DeviceId>,
    },
}

/// `ClientMessage::Login` as versions 1 to 4 lay it out.
#[derive(serde::Deserialize)]
enum LoginBeforeDevices {
    Login {
        protocol_version: u16,
        sdk_app_id: u32,
        user_id: UserId,
        user_sig: UserSig,
    },
}

/// Checks the payload of a connection's first frame. See the
/// [module docs](self).
pub fn check_login(
    payload: &[u8],
    credentials: &impl Credentials,
) -> Result<AcceptedLogin, LoginRefusal> {
    let decoded = decode_first_frame(payload);
    // A well-formed message that is neither: the client skipped the login.
    if decoded.as_ref().is_ok_and(|message| {
        !matches!(
            message,
            ClientMessage::Login { .. } | ClientMessage::Resume { .. }
        )
    }) {
        return Err(LoginRefusal::new(ErrorCode::NOT_LOGGED_IN, "log in first"));
    }
    let version = match &decoded {
        Ok(ClientMessage::Resume {
            protocol_version, ..
        }) => Ok(*protocol_version),
        _ => handshake_version(payload),
    };
    match version {
        Ok(OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION) => {}
        Ok(other) => {
            return Err(LoginRefusal::new(
                ErrorCode::UNSUPPORTED_PROTOCOL_VERSION,
                format!(
                    "protocol version {other} is not supported; this server speaks {OLDEST_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
                ),
            ));
        }
        Err(_) => return Err(not_a_login()),
    }
    let (protocol_version, sdk_app_id, user_id, user_sig, device, encryption, resume) =
        match decoded {
            Ok(ClientMessage::Login {
                protocol_version,
                sdk_app_id,
                user_id,
                user_sig,
                device_id,
                media_encryption,
            }) => (
                protocol_version,
                sdk_app_id,
                user_id,
                user_sig,
                device_id,
                // An older client cannot mean it, whatever its bytes say.
                if protocol_version >= 7 {
                    media_encryption
                } else {
                    MediaEncryption::None
                },
                None,
            ),
            Ok(ClientMessage::Resume {
                protocol_version,
                sdk_app_id,
                user_id,
                user_sig,
                token,
                received,
            }) => {
                if protocol_version < 2 {
                    return Err(LoginRefusal::new(
                        ErrorCode::PROTOCOL_ERROR,
                        "resume needs protocol version 2",
                    ));
                }
                let claim = ResumeClaim { token, received };
                (
                    protocol_version,
                    sdk_app_id,
                    user_id,
                    user_sig,
                    None,
                    MediaEncryption::None,
                    Some(claim),
                )
            }
            _ => return Err(malformed_login(payload)),
        };
    if !credentials.serves_app(sdk_app_id) {
        return Err(LoginRefusal::new(
            ErrorCode::UNKNOWN_APP,
            format!("sdkAppId {sdk_app_id} is not served here"),
        ));
    }
    if user_sig.0.len() > MAX_USER_SIG_LEN {
        return Err(LoginRefusal::new(
            ErrorCode::USERSIG_MALFORMED,
            "UserSig too long",
        ));
    }
    credentials.verify(sdk_app_id, &user_id, &user_sig)?;
    Ok(AcceptedLogin {
        sdk_app_id,
        user: user_id,
        protocol_version,
        device,
        media_encryption: encryption,
        resume,
    })
}

fn not_a_login() -> LoginRefusal {
    LoginRefusal::new(
        ErrorCode::PROTOCOL_ERROR,
        "the first frame must be a login or a resume",
    )
}

/// Why a first frame that is no login is refused: a login in every respect
/// but its user id says so, anything else is no login.
fn malformed_login(payload: &[u8]) -> LoginRefusal {
    // Its first four fields (a version-5 device id may follow).
    match postcard::take_from_bytes::<RawLogin>(payload) {
        Ok((RawLogin::Login { user_id, .. }, _)) => match UserId::new(user_id) {
            Err(error) => LoginRefusal::new(ErrorCode::INVALID_USER_ID, error.to_string()),
            Ok(_) => not_a_login(),
        },
        Err(_) => not_a_login(),
    }
}

/// `ClientMessage::Login` with its user id unchecked, to tell a bad user id
/// from a bad frame.
#[derive(serde::Deserialize)]
enum RawLogin {
    Login {
        #[allow(dead_code)]
        protocol_version: u16,
        #[allow(dead_code)]
        sdk_app_id: u32,
        user_id: String,
        #[allow(dead_code)]
        user_sig: UserSig,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::frame_to_vec;
    use crate::message::RequestId;

    struct OneApp;

    impl Credentials for OneApp {
        fn serves_app(&self, sdk_app_id: u32) -> bool {
            sdk_app_id == 7
        }

        fn verify(&self, _: u32, user: &UserId, sig: &UserSig) -> Result<(), LoginRefusal> {
            if sig.0 == format!("ok:{user}") {
                Ok(())
            } else {
                Err(LoginRefusal::new(
                    ErrorCode::USERSIG_BAD_SIGNATURE,
                    "bad signature",
                ))
            }
        }
    }

    fn payload(message: &ClientMessage) -> Vec<u8> {
        frame_to_vec(message).unwrap()[4..].to_vec()
    }

    fn login(version: u16, app: u32, sig: &str) -> Vec<u8> {
        payload(&ClientMessage::Login {
            protocol_version: version,
            sdk_app_id: app,
            user_id: UserId::new("alice").unwrap(),
            user_sig: sig.into(),
            device_id: None,
            media_encryption: MediaEncryption::None,
        })
    }

    #[test]
    fn a_version_5_login_names_its_device_and_an_older_one_none() {
        let phone = DeviceId::new("phone").unwrap();
        let named = payload(&ClientMessage::Login {
            protocol_version: 5,
            sdk_app_id: 7,
            user_id: UserId::new("alice").unwrap(),
            user_sig: "ok:alice".into(),
            device_id: Some(phone.clone()),
            media_encryption: MediaEncryption::None,
        });
        // Version 5's layout: the device id is the last field.
        let named = named[..named.len() - 1].to_vec();
        let accepted = check_login(&named, &OneApp).unwrap();
        assert_eq!(accepted.device, Some(phone));
        assert_eq!(
            login_account(&named),
            Some((7, UserId::new("alice").unwrap()))
        );
        // Version 4's layout: the UserSig is the last field.
        let mut old = named[..named.len() - 7].to_vec();
        old[1] = 4;
        let accepted = check_login(&old, &OneApp).unwrap();
        assert_eq!((accepted.protocol_version, accepted.device), (4, None));
        // A bad user id is named as such whatever the layout.
        let mut bad_user = named.clone();
        bad_user[8] = b' ';
        assert_eq!(
            check_login(&bad_user, &OneApp).map_err(|refusal| refusal.code),
            Err(ErrorCode::INVALID_USER_ID)
        );
    }

    #[test]
    fn a_version_7_login_says_how_it_encrypts_and_an_older_one_encrypts_nothing() {
        let encrypting = |version: u16| {
            payload(&ClientMessage::Login {
                protocol_version: version,
                sdk_app_id: 7,
                user_id: UserId::new("alice").unwrap(),
                user_sig: "ok:alice".into(),
                device_id: None,
                media_encryption: MediaEncryption::AppKeys,
            })
        };
        let accepted = check_login(&encrypting(7), &OneApp).unwrap();
        assert_eq!(accepted.media_encryption, MediaEncryption::AppKeys);
        // Version 6's layout ends at the device id.
        let v7 = encrypting(6);
        let accepted = check_login(&v7[..v7.len() - 1], &OneApp).unwrap();
        assert_eq!(
            (accepted.protocol_version, accepted.media_encryption),
            (6, MediaEncryption::None)
        );
        // A version-6 client cannot mean the field, whatever its bytes say.
        let accepted = check_login(&encrypting(6), &OneApp).unwrap();
        assert_eq!(accepted.media_encryption, MediaEncryption::None);
    }

    #[test]
    fn each_rule_has_its_code() {
        let code =
            |payload: Vec<u8>| check_login(&payload, &OneApp).map_err(|refusal| refusal.code);
        assert_eq!(
            check_login(&login(PROTOCOL_VERSION, 7, "ok:alice"), &OneApp)
                .unwrap()
                .user
                .as_str(),
            "alice"
        );
        assert_eq!(
            code(login(PROTOCOL_VERSION + 1, 7, "ok:alice")),
            Err(ErrorCode::UNSUPPORTED_PROTOCOL_VERSION)
        );
        assert_eq!(
            code(login(0, 7, "ok:alice")),
            Err(ErrorCode::UNSUPPORTED_PROTOCOL_VERSION)
        );
        let version_1 = check_login(&login(1, 7, "ok:alice"), &OneApp).unwrap();
        assert_eq!((version_1.protocol_version, version_1.resume), (1, None));
        let resume = |version: u16, sig: &str| {
            payload(&ClientMessage::Resume {
                protocol_version: version,
                sdk_app_id: 7,
                user_id: UserId::new("alice").unwrap(),
                user_sig: sig.into(),
                token: SessionToken([9; 16]),
                received: 3,
            })
        };
        assert_eq!(
            check_login(&resume(2, "ok:alice"), &OneApp).unwrap().resume,
            Some(ResumeClaim {
                token: SessionToken([9; 16]),
                received: 3
            })
        );
        assert_eq!(
            code(resume(1, "ok:alice")),
            Err(ErrorCode::PROTOCOL_ERROR),
            "version 1 has no resume"
        );
        assert_eq!(
            code(resume(2, "ok:bob")),
            Err(ErrorCode::USERSIG_BAD_SIGNATURE),
            "a token does not replace the UserSig"
        );
        assert_eq!(
            code(payload(&ClientMessage::Logout {
                request_id: RequestId(1)
            })),
            Err(ErrorCode::NOT_LOGGED_IN),
            "a request before the login"
        );
        // The same login with a 33-character user id (postcard: a string is
        // its length, then its bytes).
        let mut long_id = login(PROTOCOL_VERSION, 7, "ok:alice");
        // Variant, version, app: one byte each; then the user id.
        let at = 3;
        assert_eq!(long_id[at], 5);
        long_id.splice(at..at + 6, std::iter::once(33).chain([b'a'; 33]));
        assert_eq!(code(long_id), Err(ErrorCode::INVALID_USER_ID));
        assert_eq!(
            code(vec![0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(ErrorCode::PROTOCOL_ERROR)
        );
        assert_eq!(code(vec![]), Err(ErrorCode::PROTOCOL_ERROR));
        assert_eq!(
            code(login(PROTOCOL_VERSION, 8, "ok:alice")),
            Err(ErrorCode::UNKNOWN_APP)
        );
        assert_eq!(
            code(login(
                PROTOCOL_VERSION,
                7,
                &"x".repeat(MAX_USER_SIG_LEN + 1)
            )),
            Err(ErrorCode::USERSIG_MALFORMED)
        );
        assert_eq!(
            code(login(PROTOCOL_VERSION, 7, "ok:bob")),
            Err(ErrorCode::USERSIG_BAD_SIGNATURE)
        );
        let refusal = check_login(&login(PROTOCOL_VERSION, 8, "s"), &OneApp).unwrap_err();
        assert!(matches!(
            refusal.reply(),
            ServerMessage::LoginResult {
                code: ErrorCode::UNKNOWN_APP,
                ..
            }
        ));
    }
}
