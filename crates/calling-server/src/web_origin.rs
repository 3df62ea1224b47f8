//! [`WebOrigin`]: a web site whose pages may use the fallback's WebSocket,
//! checked when the settings are read, and the rule a browser's `Origin`
//! header is judged by.

/// A web page's origin as a browser names it: `http://` or `https://`, a
/// host and maybe a port; nothing else (no path). Kept in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebOrigin(String);

impl std::str::FromStr for WebOrigin {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let lower = text.trim_end_matches('/').to_ascii_lowercase();
        let host = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"))
            .ok_or_else(|| format!("{text:?}: a web origin is http:// or https://"))?;
        let valid = !host.is_empty()
            && host
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-.:[]".contains(&byte));
        if !valid {
            return Err(format!(
                "{text:?}: a web origin is a scheme, a host and maybe a port (https://app.example:8443)"
            ));
        }
        Ok(Self(lower))
    }
}

impl<'de> serde::Deserialize<'de> for WebOrigin {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for WebOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A server clients are sent to (see `redirect_to`): `host:port`, as a
/// client dials it. Checked when the settings are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress(String);

impl std::str::FromStr for ServerAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = "a server address is a host and a port (calls.example:4433, 10.0.0.2:4433, [2001:db8::2]:4433)";
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?}: {usage}"))?;
        let host_valid = !host.is_empty()
            && host
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-.:[]".contains(&byte));
        let port_valid = port.parse::<u16>().is_ok_and(|port| port > 0);
        if !host_valid || !port_valid || text.len() > signaling_proto::MAX_REDIRECT_SERVER_LEN {
            return Err(format!("{text:?}: {usage}"));
        }
        Ok(Self(text.to_owned()))
    }
}

impl<'de> serde::Deserialize<'de> for ServerAddress {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a page from `origin` (a browser's `Origin` header) may open
/// the fallback's WebSocket: one of `allowed`, or, on a development
/// server, a page on this machine (`localhost`, `127.0.0.1`, `[::1]`, any
/// port). WebTransport sessions are not judged by origin: a page reaches
/// them only with the server's certificate hashes, or a real certificate
/// for the server's name.
pub(crate) fn origin_allowed(allowed: &[WebOrigin], development: bool, origin: &str) -> bool {
    let origin = origin.to_ascii_lowercase();
    if allowed.iter().any(|allowed| allowed.0 == origin) {
        return true;
    }
    development && is_loopback_page(&origin)
}

fn is_loopback_page(origin: &str) -> bool {
    let Some(host_port) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = match host_port.strip_prefix("[::1]") {
        Some(rest) => return rest.is_empty() || is_port(rest),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    let rest = &host_port[host.len()..];
    matches!(host, "localhost" | "127.0.0.1") && (rest.is_empty() || is_port(rest))
}

fn is_port(rest: &str) -> bool {
    rest.strip_prefix(':')
        .is_some_and(|port| port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn origins_parse_and_normalize() {
        let origin: WebOrigin = "HTTPS://App.Example:8443/".parse().unwrap();
        assert_eq!(origin.to_string(), "https://app.example:8443");
        for bad in [
            "app.example",
            "ftp://app.example",
            "https://",
            "https://a.example/path",
            "https://a b",
        ] {
            assert!(bad.parse::<WebOrigin>().is_err(), "{bad}");
        }
    }

    #[test]
    fn listed_origins_and_development_loopback_pages_are_allowed() {
        let allowed = ["https://app.example".parse().unwrap()];
        assert!(origin_allowed(&allowed, false, "https://app.example"));
        assert!(origin_allowed(&allowed, false, "HTTPS://APP.EXAMPLE"));
        assert!(!origin_allowed(&allowed, false, "https://evil.example"));
        assert!(!origin_allowed(&allowed, false, "http://127.0.0.1:8080"));
        for page in [
            "http://127.0.0.1:8080",
            "http://localhost",
            "https://[::1]:3000",
        ] {
            assert!(origin_allowed(&[], true, page), "{page}");
        }
        for page in [
            "http://127.0.0.1.evil.example",
            "http://localhost:99999",
            "null",
            "http://10.0.0.1",
        ] {
            assert!(!origin_allowed(&[], true, page), "{page}");
        }
    }

    #[test]
    fn a_server_to_redirect_to_is_a_host_and_a_port() {
        for good in ["calls.example:4433", "10.0.0.2:4433", "[2001:db8::2]:4433"] {
            assert_eq!(
                good.parse::<ServerAddress>().map(|a| a.to_string()),
                Ok(good.to_owned())
            );
        }
        for bad in [
            "calls.example",
            ":4433",
            "calls.example:0",
            "calls.example:99999",
            "a b:1",
            "https://x:1/",
        ] {
            assert!(bad.parse::<ServerAddress>().is_err(), "{bad}");
        }
        let long = format!("{}:4433", "a".repeat(300));
        assert!(long.parse::<ServerAddress>().is_err());
    }
}
