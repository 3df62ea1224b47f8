//! [`ServerAddress`]: a server a draining or stopping server sends its
//! clients to (the setting `redirect_to`), checked when the settings are
//! read.

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

#[cfg(test)]
mod tests {
    use super::*;

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
