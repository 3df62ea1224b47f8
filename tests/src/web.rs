//! A static web site on loopback for pages that use `opencalling-web`:
//! folders under URL prefixes, and files made in memory (a demo's
//! `config.json`). Plain HTTP on 127.0.0.1 is a secure context for a
//! browser, which WebTransport, WebCodecs and AudioWorklet need. For the
//! browser tests and `cargo xtask web-demo`; not a production web server
//! (GET only, one request per connection).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The TypeScript SDK's folder (`web/opencalling-web`); its build is in
/// `dist/src` (`cargo xtask ci` and `cargo xtask web-demo` build it).
pub fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("web")
        .join("opencalling-web")
}

/// The SDK's built modules, to serve at a prefix.
///
/// # Panics
/// If the SDK was not built: the message says how to build it.
pub fn sdk_build() -> PathBuf {
    let build = sdk_dir().join("dist").join("src");
    assert!(
        build.join("index.js").is_file(),
        "{} is not built: run `npm ci && npm run build` there (cargo xtask ci does)",
        sdk_dir().display()
    );
    build
}

/// The users the demo page offers, each with a UserSig the site's
/// `config.json` carries (a demo's backend).
pub const DEMO_USERS: [&str; 3] = ["alice", "bob", "carol"];

/// The web demo (`web/demo`): the page, the SDK at `/sdk/`, and its
/// `config.json` (the app, a UserSig per demo user, the server's
/// WebTransport address and browser certificate hashes, and the user the
/// page offers to call).
///
/// # Panics
/// If the SDK was not built ([`sdk_build`]).
pub fn demo_site(
    app: &calling_server::AppCredentials,
    server: &calling_server::RunningServer,
    certificate_hashes: &[String],
    callee: &str,
) -> Site {
    let users: serde_json::Map<String, serde_json::Value> = DEMO_USERS
        .iter()
        .map(|user| {
            (
                (*user).to_owned(),
                crate::server::user_sig(app, user).into(),
            )
        })
        .collect();
    let config = serde_json::json!({
        "sdkAppId": app.sdk_app_id,
        "server": {
            "webTransportUrl": format!("https://127.0.0.1:{}/opencalling", server.local_addr().port()),
            "certificateHashes": certificate_hashes,
        },
        "users": users,
        "bot": callee,
    });
    Site::default()
        .folder("/sdk/", sdk_build())
        .folder(
            "/",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("web")
                .join("demo"),
        )
        .file(
            "/config.json",
            "application/json",
            config.to_string().into_bytes(),
        )
}

/// A development server's browser certificate hashes (`server.json` in its
/// data directory).
///
/// # Panics
/// If the file is missing or has none: a test tool.
pub fn browser_certificate_hashes(data_dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(data_dir.join("server.json")).expect("server.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("server.json is JSON");
    json["browser_certificate_hashes"]
        .as_array()
        .expect("browser certificate hashes")
        .iter()
        .filter_map(|hash| hash.as_str().map(str::to_owned))
        .collect()
}

/// What the site serves.
#[derive(Debug, Default, Clone)]
pub struct Site {
    folders: Vec<(String, PathBuf)>,
    files: HashMap<String, (String, Vec<u8>)>,
}

impl Site {
    /// Serves `folder` under `prefix` (`/sdk/`: `/sdk/index.js` is
    /// `folder/index.js`; `/` ends in `index.html`).
    #[must_use]
    pub fn folder(mut self, prefix: &str, folder: PathBuf) -> Self {
        self.folders.push((prefix.to_owned(), folder));
        self
    }

    /// Serves `body` at `path` with `content_type`.
    #[must_use]
    pub fn file(mut self, path: &str, content_type: &str, body: Vec<u8>) -> Self {
        self.files
            .insert(path.to_owned(), (content_type.to_owned(), body));
        self
    }

    /// Starts serving on `addr` (port 0: any); stops when dropped.
    ///
    /// # Errors
    /// If the address cannot be bound.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<StaticSite> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let site = Arc::new(self);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let site = Arc::clone(&site);
                tokio::spawn(async move {
                    let _ = site.answer(stream).await;
                });
            }
        });
        Ok(StaticSite { addr, task })
    }

    async fn answer(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let mut request = Vec::new();
        let mut buffer = [0; 4096];
        while !request.windows(4).any(|window| window == b"\r\n\r\n") {
            let read = stream.read(&mut buffer).await?;
            if read == 0 || request.len() > 16 * 1024 {
                return Ok(());
            }
            request.extend_from_slice(&buffer[..read]);
        }
        let text = String::from_utf8_lossy(&request);
        let mut words = text.split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let path = target.split(['?', '#']).next().unwrap_or("/");
        let (status, content_type, body) = if method == "GET" {
            match self.find(path) {
                Some((content_type, body)) => ("200 OK", content_type, body),
                None => (
                    "404 Not Found",
                    "text/plain".to_owned(),
                    b"not found\n".to_vec(),
                ),
            }
        } else {
            (
                "405 Method Not Allowed",
                "text/plain".to_owned(),
                b"GET only\n".to_vec(),
            )
        };
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    }

    fn find(&self, path: &str) -> Option<(String, Vec<u8>)> {
        if let Some(file) = self.files.get(path) {
            return Some(file.clone());
        }
        let (prefix, folder) = self
            .folders
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())?;
        let mut relative = path[prefix.len()..].to_owned();
        if relative.is_empty() || relative.ends_with('/') {
            relative.push_str("index.html");
        }
        let relative = Path::new(&relative);
        // Nothing outside the folder: no `..`, no absolute paths.
        if !relative
            .components()
            .all(|component| matches!(component, Component::Normal(_)))
        {
            return None;
        }
        let file = folder.join(relative);
        let body = std::fs::read(&file).ok()?;
        Some((content_type(&file).to_owned(), body))
    }
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|extension| extension.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("css") => "text/css",
        Some("wav") => "audio/wav",
        _ => "application/octet-stream",
    }
}

/// A site being served; see [`Site`].
#[derive(Debug)]
pub struct StaticSite {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl StaticSite {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of `path` on it.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for StaticSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}
