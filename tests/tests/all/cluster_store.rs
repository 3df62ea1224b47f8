//! The cluster's store on a real Redis means what `MemoryStore`, the store
//! of the deterministic cluster tests, means: the same requests get the
//! same answers, leases lapse alike, and a restart that loses the data is
//! survived the same way.

use std::time::{Duration, Instant};

use calling_cluster::{MemoryStore, NodeId, StoreReply, StoreRequest};
use calling_server::cluster_store::{REQUEST_TIMEOUT, RedisStore};
use opencalling_tests::redis::RedisServer;

// Long enough that the checks below sit 200 ms or more from any expiry.
const LEASE: Duration = Duration::from_millis(1_000);

fn claim(node: u32, term: Option<u64>, highest_seen: u64, take: bool) -> StoreRequest {
    StoreRequest::ClaimControl {
        node: NodeId(node),
        addr: format!("127.0.0.1:{}", 9000 + node),
        term,
        highest_seen,
        take,
        lease: LEASE,
    }
}

fn register(node: u32) -> StoreRequest {
    StoreRequest::Register {
        node: NodeId(node),
        addr: format!("127.0.0.1:{}", 9000 + node),
        lease: LEASE,
    }
}

/// Runs `request` on both stores and checks they agree; the answer.
async fn both(redis: &RedisStore, memory: &mut MemoryStore, request: StoreRequest) -> StoreReply {
    let from_redis = redis.run(&request).await;
    let from_memory = memory.apply(Instant::now(), &request);
    assert_eq!(from_redis, from_memory, "{request:?}");
    from_redis
}

fn holder(reply: &StoreReply) -> Option<(u32, u64)> {
    match reply {
        StoreReply::Control(holder) => holder.as_ref().map(|h| (h.node.0, h.term)),
        other => panic!("not a claim's answer: {other:?}"),
    }
}

fn live(reply: &StoreReply) -> Vec<u32> {
    match reply {
        StoreReply::Nodes(nodes) => nodes.iter().map(|(node, _)| node.0).collect(),
        other => panic!("not a node list: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_answers_every_request_as_the_memory_store_does() {
    let mut server = RedisServer::start().unwrap();
    let redis = RedisStore::new(&server.url(), "test").unwrap();
    let mut memory = MemoryStore::new();
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));

    let first = both(&redis, &mut memory, claim(1, None, 0, true)).await;
    assert_eq!(holder(&first), Some((1, 1)));
    let other = both(&redis, &mut memory, claim(2, None, 0, true)).await;
    assert_eq!(holder(&other), Some((1, 1)), "one holder");
    both(&redis, &mut memory, claim(2, None, 0, false)).await;

    both(&redis, &mut memory, register(1)).await;
    both(&redis, &mut memory, register(2)).await;
    assert_eq!(
        live(&both(&redis, &mut memory, StoreRequest::LiveNodes).await),
        [1, 2]
    );
    pause(500).await;
    both(&redis, &mut memory, register(2)).await;
    pause(700).await;
    // Node 1's entry lapsed, node 2's was renewed; so did the role.
    assert_eq!(
        live(&both(&redis, &mut memory, StoreRequest::LiveNodes).await),
        [2]
    );
    let nobody = both(&redis, &mut memory, claim(2, None, 1, false)).await;
    assert_eq!(holder(&nobody), None, "asking takes nothing");
    let back = both(&redis, &mut memory, claim(1, Some(1), 1, true)).await;
    assert_eq!(
        holder(&back),
        Some((1, 1)),
        "its old term: nobody took the role since"
    );
    both(
        &redis,
        &mut memory,
        StoreRequest::ReleaseControl {
            node: NodeId(1),
            term: 1,
        },
    )
    .await;
    let next = both(&redis, &mut memory, claim(2, None, 1, true)).await;
    assert_eq!(holder(&next), Some((2, 2)));

    // Redis loses everything; the holder takes its term back, and the
    // terms go on from the highest seen.
    server.resume().unwrap();
    memory.restart();
    // The store reconnects by itself at its next requests.
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.run(&StoreRequest::LiveNodes).await == StoreReply::Unreachable {
        assert!(Instant::now() < deadline, "the store reconnects");
    }
    let asked = both(&redis, &mut memory, claim(1, None, 2, false)).await;
    assert_eq!(holder(&asked), None);
    let kept = both(&redis, &mut memory, claim(2, Some(2), 2, true)).await;
    assert_eq!(holder(&kept), Some((2, 2)));
    both(&redis, &mut memory, register(3)).await;
    both(
        &redis,
        &mut memory,
        StoreRequest::Deregister { node: NodeId(3) },
    )
    .await;
    assert!(live(&both(&redis, &mut memory, StoreRequest::LiveNodes).await).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_answers_unreachable_in_time_and_recovers_by_itself() {
    let mut server = RedisServer::start().unwrap();
    let redis = RedisStore::new(&server.url(), "test").unwrap();
    assert_eq!(redis.run(&register(1)).await, StoreReply::Done);
    server.kill();
    for _ in 0..3 {
        let asked = Instant::now();
        assert_eq!(redis.run(&register(1)).await, StoreReply::Unreachable);
        assert!(asked.elapsed() <= REQUEST_TIMEOUT + Duration::from_millis(250));
    }
    server.resume().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut reply = StoreReply::Unreachable;
    while Instant::now() < deadline && reply == StoreReply::Unreachable {
        reply = redis.run(&register(1)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reply, StoreReply::Done, "the same store object reconnects");
}

#[test]
fn a_store_that_never_existed_is_no_error_until_asked() {
    // A port nothing listens on: the store is created (lazily connected);
    // its answers say unreachable.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let redis = RedisStore::new("redis://127.0.0.1:1/", "test").unwrap();
        assert_eq!(
            redis.run(&StoreRequest::LiveNodes).await,
            StoreReply::Unreachable
        );
        assert!(RedisStore::new("http://not-redis", "test").is_err());
    });
}
