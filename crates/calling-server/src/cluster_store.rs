//! The cluster's store on Redis: each [`StoreRequest`] of `calling-cluster`
//! as one atomic Lua script, over the `redis` crate's reconnecting
//! connection manager.
//!
//! Keys share one hash tag (`{prefix}`), so every script touches one slot
//! and the layout works on a Redis Cluster as on one instance:
//!
//! - `{prefix}:control` = `"<node> <term> <addr>"`, with the role's lease
//!   as its expiry;
//! - `{prefix}:term`: the last term handed out (never reused);
//! - `{prefix}:node:<id>` = `<addr>`, with the registration's lease as its
//!   expiry, and `{prefix}:nodes`, the set of ids ever registered (pruned
//!   of lapsed ones on every read).
//!
//! A request that fails or takes longer than [`REQUEST_TIMEOUT`] is
//! answered [`StoreReply::Unreachable`]; the manager reconnects by itself.
//! The Redis URL may hold a password: it is never logged.

use std::time::Duration;

use calling_cluster::{ControlHolder, NodeId, StoreReply, StoreRequest};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use tracing::{debug, warn};

/// How long one request may take before it counts as unreachable: well
/// under a lease's renewal period.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

const CLAIM_CONTROL: &str = r"
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local seen = tonumber(ARGV[5])
if seen > last then
  redis.call('SET', KEYS[2], seen)
  last = seen
end
local current = redis.call('GET', KEYS[1])
if current then
  local node, term = string.match(current, '^(%d+) (%d+) ')
  if node == ARGV[1] and term == ARGV[3] then
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
  end
  return current
end
if ARGV[6] ~= '1' then
  return false
end
local term
if ARGV[3] ~= '' and tonumber(ARGV[3]) == last then
  term = last
else
  term = redis.call('INCR', KEYS[2])
end
local value = ARGV[1] .. ' ' .. term .. ' ' .. ARGV[2]
redis.call('SET', KEYS[1], value, 'PX', ARGV[4])
return value
";

const RELEASE_CONTROL: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local node, term = string.match(current, '^(%d+) (%d+) ')
  if node == ARGV[1] and term == ARGV[2] then
    redis.call('DEL', KEYS[1])
  end
end
return 1
";

const REGISTER: &str = r"
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[1])
return 1
";

const DEREGISTER: &str = r"
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[1], ARGV[1])
return 1
";

const LIVE_NODES: &str = r"
local live = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local addr = redis.call('GET', ARGV[1] .. id)
  if addr then
    table.insert(live, id)
    table.insert(live, addr)
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return live
";

/// Why the store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StoreSetupError {
    /// The URL is not a Redis URL.
    #[error("the Redis URL is not usable (its text is not repeated here: it may hold a password)")]
    Url,
}

/// The cluster's store on Redis. See the [module docs](self).
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
    claim: Script,
    release: Script,
    register: Script,
    deregister: Script,
    live_nodes: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store at `url` (`redis://…`), its keys under `prefix`. Connects
    /// lazily and reconnects by itself: a Redis that is down now is no
    /// error here, only in the answers. Call it within a tokio runtime.
    pub fn new(url: &str, prefix: &str) -> Result<Self, StoreSetupError> {
        let client = Client::open(url).map_err(|_| StoreSetupError::Url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REQUEST_TIMEOUT))
            .set_response_timeout(Some(REQUEST_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|_| StoreSetupError::Url)?;
        Ok(Self {
            connection,
            prefix: format!("{{{prefix}}}"),
            claim: Script::new(CLAIM_CONTROL),
            release: Script::new(RELEASE_CONTROL),
            register: Script::new(REGISTER),
            deregister: Script::new(DEREGISTER),
            live_nodes: Script::new(LIVE_NODES),
        })
    }

    /// Runs one request; anything but an answer in time is
    /// [`StoreReply::Unreachable`].
    pub async fn run(&self, request: &StoreRequest) -> StoreReply {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.run_unbounded(request)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => {
                // The error's text names no URL or password: the manager's
                // errors carry the kind and the server's message.
                warn!(kind = ?error.kind(), "cluster store request failed");
                StoreReply::Unreachable
            }
            Err(_) => {
                debug!("cluster store request timed out");
                StoreReply::Unreachable
            }
        }
    }

    async fn run_unbounded(&self, request: &StoreRequest) -> redis::RedisResult<StoreReply> {
        let mut connection = self.connection.clone();
        let control = format!("{}:control", self.prefix);
        let nodes = format!("{}:nodes", self.prefix);
        let node_key = |node: NodeId| format!("{}:node:{}", self.prefix, node.0);
        Ok(match request {
            StoreRequest::Register { node, addr, lease } => {
                let _: i64 = self
                    .register
                    .key(&nodes)
                    .key(node_key(*node))
                    .arg(node.0)
                    .arg(addr)
                    .arg(millis(*lease))
                    .invoke_async(&mut connection)
                    .await?;
                StoreReply::Done
            }
            StoreRequest::Deregister { node } => {
                let _: i64 = self
                    .deregister
                    .key(&nodes)
                    .key(node_key(*node))
                    .arg(node.0)
                    .invoke_async(&mut connection)
                    .await?;
                StoreReply::Done
            }
            StoreRequest::ClaimControl {
                node,
                addr,
                term,
                highest_seen,
                take,
                lease,
            } => {
                let value: Option<String> = self
                    .claim
                    .key(&control)
                    .key(format!("{}:term", self.prefix))
                    .arg(node.0)
                    .arg(addr)
                    .arg(term.map(|term| term.to_string()).unwrap_or_default())
                    .arg(millis(*lease))
                    .arg(highest_seen)
                    .arg(if *take { "1" } else { "0" })
                    .invoke_async(&mut connection)
                    .await?;
                match value.as_deref().map(parse_holder) {
                    None => StoreReply::Control(None),
                    Some(Some(holder)) => StoreReply::Control(Some(holder)),
                    Some(None) => {
                        warn!("the control key holds something else than a holder: unreachable");
                        StoreReply::Unreachable
                    }
                }
            }
            StoreRequest::ReleaseControl { node, term } => {
                let _: i64 = self
                    .release
                    .key(&control)
                    .arg(node.0)
                    .arg(term)
                    .invoke_async(&mut connection)
                    .await?;
                StoreReply::Done
            }
            StoreRequest::LiveNodes => {
                let flat: Vec<String> = self
                    .live_nodes
                    .key(&nodes)
                    .arg(format!("{}:node:", self.prefix))
                    .invoke_async(&mut connection)
                    .await?;
                let mut live: Vec<(NodeId, String)> = flat
                    .chunks_exact(2)
                    .filter_map(|pair| Some((NodeId(pair[0].parse().ok()?), pair[1].clone())))
                    .collect();
                live.sort();
                StoreReply::Nodes(live)
            }
        })
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// `"<node> <term> <addr>"`.
fn parse_holder(value: &str) -> Option<ControlHolder> {
    let mut parts = value.splitn(3, ' ');
    let node = NodeId(parts.next()?.parse().ok()?);
    let term = parts.next()?.parse().ok()?;
    let addr = parts.next()?.to_owned();
    Some(ControlHolder { node, term, addr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_parse_and_nonsense_does_not() {
        assert_eq!(
            parse_holder("7 3 10.0.0.1:4434"),
            Some(ControlHolder {
                node: NodeId(7),
                term: 3,
                addr: "10.0.0.1:4434".into()
            })
        );
        for nonsense in ["", "7", "7 x a", "x 3 a", "7 3"] {
            assert_eq!(parse_holder(nonsense), None, "{nonsense:?}");
        }
    }
}
