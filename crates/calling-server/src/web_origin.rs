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
}
