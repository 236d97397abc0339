//! Yunhu: a request that fails at any moment of a sync changes nothing. Over a small
//! generated world, a clean sync is the reference; then for every k up to the number of
//! requests it made, a sync whose k-th request fails once (a 502, a connection dropped
//! mid-body, an answer held back past the timeout), followed by one more sync if that one
//! did not end ok, must leave an archive equal to the clean one. The same for an
//! incremental sync after the world changed (new messages, edits, recalls). Real HTTP, real
//! protobuf, real PostgreSQL.

use crate::common;

use std::time::Duration;

use chatvault::config::{PlatformConfig, Secret, SourceConfig, YunhuConfig};
use chatvault::model::SourceName;
use chatvault::sim::serve::RequestFailure;
use chatvault::sim::yunhu::{SimServer, World, WorldSpec};
use chatvault::store::Store;
use chatvault::sync::{sync_source, SourceResult, SyncOptions};
use rand::SeedableRng;

const TIMEOUT: Duration = Duration::from_millis(300);

fn spec() -> WorldSpec {
    WorldSpec {
        seed: 23,
        users: 6,
        groups: 2,
        bots: 1,
        direct_chats: 2,
        messages: 300,
        unlisted_chats: 1,
        late_joined_groups: 1,
        hidden_per_mille: 20,
        edited_per_mille: 60,
        recalled_per_mille: 30,
        ..WorldSpec::default()
    }
}

/// The world of [`spec`] after some activity: new messages, edits (some twice), recalls.
fn changed_world() -> World {
    let mut world = World::generate(&spec());
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    world.random_activity(&mut rng, 90);
    world
}

fn source(server: &SimServer, rescan_every_minutes: u32) -> SourceConfig {
    SourceConfig {
        name: SourceName::new("y"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: TIMEOUT,
        enabled: true,
        push: true,
        platform: PlatformConfig::Yunhu(YunhuConfig {
            base_url: server.base_url(),
            token: Secret::new(spec().token),
            rescan_messages: 60,
            rescan_days: 0,
            rescan_every_minutes,
            ws_url: chatvault::connector::yunhu::push::DEFAULT_WS_URL.into(),
        }),
    }
}

fn options() -> SyncOptions {
    SyncOptions {
        backoff_base: Duration::from_millis(2),
        max_backoff: Duration::from_millis(10),
        ..SyncOptions::default()
    }
}

async fn sync(store: &Store, src: &SourceConfig) -> SourceResult {
    let result = sync_source(store, src, &options(), None).await;
    assert!(!result.skipped, "nothing else syncs this source");
    result
}

fn failure(k: u64) -> RequestFailure {
    match k % 3 {
        0 => RequestFailure::BadGateway,
        1 => RequestFailure::Dropped,
        _ => RequestFailure::Stalled(TIMEOUT * 2),
    }
}

/// Sync with the `k`-th request failing once, then once more if that run failed; the
/// archive must be `want`.
async fn sync_failing(
    server: &SimServer,
    store: &Store,
    src: &SourceConfig,
    k: u64,
    want: &[String],
    what: &str,
) {
    let how = failure(k);
    server.fail_request(k, how);
    let first = sync(store, src).await;
    assert!(
        !server.failure_pending(),
        "{what}: request {k} of a clean sync's was never sent"
    );
    if !first.ok() {
        let again = sync(store, src).await;
        assert!(
            again.ok(),
            "{what}: request {k} failing ({how:?}), then a clean run: {:?}",
            again.error
        );
    }
    let got = common::archive_snapshot(store).await;
    let diff = common::snapshot_diff(want, &got);
    assert!(
        diff.is_empty(),
        "{what}: request {k} failing ({how:?}; first run {:?}, {:?}) left a different archive:\n{}",
        first.status,
        first.error,
        diff.join("\n")
    );
}

#[tokio::test]
async fn a_request_failing_at_any_moment_of_a_first_sync_changes_nothing() {
    let server = SimServer::start(World::generate(&spec())).await;
    let src = source(&server, 0);
    let (clean, _) = common::store().await;
    let before = server.request_count();
    let result = sync(&clean, &src).await;
    assert!(result.ok(), "{:?}", result.error);
    let n = server.request_count() - before;
    let want = common::archive_snapshot(&clean).await;
    assert!(
        want.iter().filter(|l| l.starts_with("message ")).count() > 200,
        "the world is archived"
    );
    assert!(want.iter().any(|l| l.starts_with("gap ")));
    assert!(want.iter().any(|l| l.contains(" v3 ")), "edited twice");
    assert!(n > 20, "{n} requests");
    eprintln!("first sync: {n} requests");
    for k in 1..=n {
        let (store, _) = common::store().await;
        sync_failing(&server, &store, &src, k, &want, "first sync").await;
    }
    server.shutdown().await;
}

/// An incremental sync after the world changed, with the trailing window re-read every run
/// (`rescan_every_minutes = 0`) or not due (60: changed chats are caught up with
/// `list-message-by-seq` where it answers contiguously).
async fn incremental(rescan_every_minutes: u32) {
    let server = SimServer::start(World::generate(&spec())).await;
    let src = source(&server, rescan_every_minutes);
    let what = format!("incremental sync (window every {rescan_every_minutes} min)");
    // The reference: the world, a sync, the changes, a sync.
    let (clean, _) = common::store().await;
    assert!(sync(&clean, &src).await.ok());
    *server.world() = changed_world();
    let before = server.request_count();
    let result = sync(&clean, &src).await;
    assert!(result.ok(), "{:?}", result.error);
    let n = server.request_count() - before;
    assert!(result.counts.messages_new > 0);
    if rescan_every_minutes == 0 {
        assert!(result.counts.messages_changed > 0, "edits and recalls seen");
    }
    eprintln!("{what}: {n} requests");
    let want = common::archive_snapshot(&clean).await;
    for k in 1..=n {
        let (store, _) = common::store().await;
        *server.world() = World::generate(&spec());
        assert!(sync(&store, &src).await.ok());
        *server.world() = changed_world();
        sync_failing(&server, &store, &src, k, &want, &what).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_failing_at_any_moment_of_an_incremental_sync_changes_nothing() {
    incremental(0).await;
}

#[tokio::test]
async fn a_request_failing_at_any_moment_of_a_by_seq_catch_up_changes_nothing() {
    incremental(60).await;
}

/// The case: the first `list-message` of a chat fails once (a 502, then a dropped
/// connection); the engine retries it, and the chat is read in full, not recorded as
/// complete and empty.
#[tokio::test]
async fn a_retried_first_request_of_a_chat_reads_the_chat_in_full() {
    for how in [RequestFailure::BadGateway, RequestFailure::Dropped] {
        let server = SimServer::start(World::generate(&spec())).await;
        let src = source(&server, 0);
        let (store, _) = common::store().await;
        // the conversation list, the address book, then the first chat's first page
        server.fail_request(3, how);
        let result = sync(&store, &src).await;
        assert!(!server.failure_pending());
        assert!(result.ok(), "{:?}", result.error);
        assert!(result.counts.retries >= 1, "the failure was retried");
        let visible: i64 = server
            .world()
            .truth()
            .iter()
            .map(|c| c.messages.iter().filter(|m| m.visible).count() as i64)
            .sum();
        assert_eq!(result.counts.messages_new as i64, visible, "{how:?}");
        assert_eq!(
            common::count(&store, "SELECT count(*) FROM archive.messages").await,
            visible
        );
        server.shutdown().await;
    }
}

/// The class behind it: fetching the same cursor twice, or again after a failed attempt,
/// gives the same page and the same next cursor, at every step of every chat.
#[tokio::test]
async fn the_same_cursor_always_gives_the_same_page() {
    use chatvault::connector::http::HttpClient;
    use chatvault::connector::{self, DiscoverRequest, FetchRequest};

    let server = SimServer::start(changed_world()).await;
    let src = source(&server, 0);
    let conn = connector::build(&src, HttpClient::new(0.0, TIMEOUT).unwrap(), None).unwrap();
    let discovery = conn
        .discover(DiscoverRequest {
            known: &[],
            state: None,
            full: false,
        })
        .await
        .unwrap();
    let mut steps = 0;
    for conversation in &discovery.conversations {
        let mut cursor = None;
        loop {
            let fetch = |attempt| {
                conn.fetch(FetchRequest {
                    conversation,
                    feed: "messages",
                    cursor: cursor.as_ref(),
                    full: false,
                    attempt,
                    changed: &[],
                })
            };
            let a = fetch(0).await.unwrap();
            let b = fetch(0).await.unwrap();
            // and once more after an attempt whose second request failed, halfway through
            // a chain of pages
            server.fail_request(2, RequestFailure::Dropped);
            let c = match fetch(0).await {
                Err(_) => fetch(1).await.unwrap(),
                Ok(c) => {
                    // a one-request page: disarm the failure
                    server.fail_request(u64::MAX / 2, RequestFailure::BadGateway);
                    c
                }
            };
            for other in [&b, &c] {
                assert_eq!(a.next_cursor, other.next_cursor);
                assert_eq!(a.messages, other.messages);
                assert_eq!(a.gaps, other.gaps);
                assert_eq!(a.quarantine, other.quarantine);
                assert_eq!(a.done, other.done);
            }
            steps += 1;
            if a.done {
                break;
            }
            assert_ne!(cursor.as_ref(), Some(&a.next_cursor), "every page moves on");
            cursor = Some(a.next_cursor);
        }
    }
    assert!(steps >= discovery.conversations.len(), "{steps} pages");
    server.shutdown().await;
}
