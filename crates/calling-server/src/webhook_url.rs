//! [`WebhookUrl`]: where the operator's webhooks go, checked when the
//! settings are read.

use hyper::Uri;

/// A webhook URL: `http://` or `https://`, with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(Uri);

impl WebhookUrl {
    /// The parsed URL.
    pub(crate) fn uri(&self) -> &Uri {
        &self.0
    }
}

impl std::str::FromStr for WebhookUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let uri: Uri = text
            .parse()
            .map_err(|error| format!("{text:?} is not a URL: {error}"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(format!("{text:?}: a webhook URL is http:// or https://")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("{text:?}: a webhook URL names a host"));
        }
        Ok(Self(uri))
    }
}

impl<'de> serde::Deserialize<'de> for WebhookUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
