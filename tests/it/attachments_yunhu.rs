//! Yunhu attachments end to end for the connector's part: a fake world synced over real
//! HTTP (real protobuf) into a real PostgreSQL; every archived version's references
//! (`Connector::attachments`) are the files the world serves, and every download built
//! from `Connector::media_request` (sent here with a plain client) gets the bytes the
//! world's truth hashes, or the refusal the world says: 403 for an expired signature,
//! 404 for a deleted file, 403 without Yunhu's `Referer`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chatvault::attachments::{AttachmentKind, AttachmentRef};
use chatvault::config::{PlatformConfig, Secret, SourceConfig, YunhuConfig};
use chatvault::connector::http::HttpClient;
use chatvault::connector::{self, Connector};
use chatvault::model::{Content, MessageKind, SourceName};
use chatvault::sim::serve::RequestFailure;
use chatvault::sim::yunhu::{AttachmentTruth, MediaState, SimServer, World, WorldSpec};
use chatvault::store::Store;
use chatvault::sync::{sync_source, SyncOptions};
use sha2::{Digest, Sha256};

fn spec() -> WorldSpec {
    WorldSpec {
        seed: 23,
        users: 8,
        groups: 2,
        bots: 1,
        direct_chats: 3,
        messages: 500,
        ..WorldSpec::default()
    }
}

fn source(server: &SimServer, token: &str) -> SourceConfig {
    SourceConfig {
        name: SourceName::new("y"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(5),
        enabled: true,
        push: true,
        platform: PlatformConfig::Yunhu(YunhuConfig {
            base_url: server.base_url(),
            token: Secret::new(token),
            rescan_messages: 0,
            rescan_days: 0,
            rescan_every_minutes: 0,
            ws_url: chatvault::connector::yunhu::push::DEFAULT_WS_URL.into(),
        }),
    }
}

/// A synced world: the fake, the store, the connector.
async fn synced() -> (SimServer, Store, Box<dyn Connector>) {
    let spec = spec();
    let server = SimServer::start(World::generate(&spec)).await;
    let src = source(&server, &spec.token);
    let store = Store::from_pool(chatvault::pg::testing::fresh_pool().await);
    store.migrate().await.expect("migrations apply");
    let result = sync_source(&store, &src, &SyncOptions::default(), None).await;
    assert!(result.error.is_none(), "{:?}", result.error);
    let conn = connector::build(
        &src,
        HttpClient::new(0.0, Duration::from_secs(5)).unwrap(),
        None,
    )
    .unwrap();
    (server, store, conn)
}

/// Every archived version as its `Content`, by message id, oldest first.
async fn versions(store: &Store) -> BTreeMap<String, Vec<Content>> {
    let rows: Vec<(String, String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT v.message_id, m.kind, v.text, v.content
         FROM archive.message_versions v
         JOIN archive.messages m USING (source, conversation_id, message_id)
         ORDER BY v.message_id, v.version",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let mut out: BTreeMap<String, Vec<Content>> = BTreeMap::new();
    for (id, kind, text, content) in rows {
        let kind = MessageKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .unwrap_or_else(|| panic!("kind {kind}"));
        out.entry(id).or_default().push(Content {
            kind,
            text,
            content,
        });
    }
    out
}

fn described(refs: &[AttachmentRef]) -> BTreeSet<(AttachmentKind, String)> {
    refs.iter().map(|r| (r.kind, r.url.clone())).collect()
}

fn expected(truth: &[AttachmentTruth]) -> BTreeSet<(AttachmentKind, String)> {
    truth.iter().map(|a| (a.kind, a.url.clone())).collect()
}

/// Every archived reference with what the world says of it.
async fn references(
    server: &SimServer,
    store: &Store,
    conn: &dyn Connector,
) -> Vec<(AttachmentRef, AttachmentTruth)> {
    let truth = server.attachments_truth();
    let mut out = Vec::new();
    for (id, versions) in versions(store).await {
        let current = versions.last().unwrap();
        for r in conn.attachments(current) {
            let t = truth[&id].iter().find(|t| t.url == r.url).unwrap().clone();
            out.push((r, t));
        }
    }
    out
}

#[tokio::test]
async fn every_archived_version_lists_the_files_its_message_references() {
    let (server, store, conn) = synced().await;
    let truth = server.attachments_truth();
    let archived = versions(&store).await;
    let visible: BTreeSet<String> = server
        .world()
        .truth()
        .into_iter()
        .flat_map(|c| c.messages)
        .filter(|m| m.visible)
        .map(|m| m.msg_id)
        .collect();
    let mut with_files = 0;
    for (id, versions) in &archived {
        let want = truth.get(id).map(|t| expected(t)).unwrap_or_default();
        for (i, content) in versions.iter().enumerate() {
            let refs = conn.attachments(content);
            // an edit changes text only: every version references the same files
            assert_eq!(described(&refs), want, "{id} version {}", i + 1);
            assert_eq!(refs, conn.attachments(content), "pure");
        }
        with_files += usize::from(!want.is_empty());
    }
    // every visible message with files was archived and counted above
    let expected_with_files = truth.keys().filter(|id| visible.contains(*id)).count();
    assert_eq!(with_files, expected_with_files);
    assert!(with_files > 20, "{with_files}");

    let refs = references(&server, &store, conn.as_ref()).await;
    let kinds: BTreeSet<AttachmentKind> = refs.iter().map(|(r, _)| r.kind).collect();
    assert_eq!(
        kinds,
        AttachmentKind::ALL.into_iter().collect(),
        "every kind"
    );
    for (r, t) in &refs {
        match r.kind {
            AttachmentKind::Image | AttachmentKind::File => {
                assert_eq!(r.size, Some(t.size as i64), "{r:?}")
            }
            AttachmentKind::Video | AttachmentKind::Voice => {
                assert!(r.duration_ms.unwrap() >= 1000, "{r:?}")
            }
            _ => {}
        }
        if r.kind == AttachmentKind::File {
            assert!(r.name.as_deref().unwrap().ends_with(".pdf"), "{r:?}");
        }
    }
    server.shutdown().await;
}

async fn download(
    client: &reqwest::Client,
    conn: &dyn Connector,
    r: &AttachmentRef,
) -> (u16, Vec<u8>) {
    let request = conn.media_request(r).await.unwrap();
    assert!(request.credentials.is_empty(), "no token to media hosts");
    let mut builder = client.get(request.url.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let response = builder.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn media_requests_fetch_the_bytes_the_world_serves_and_its_refusals() {
    let (server, store, conn) = synced().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let refs = references(&server, &store, conn.as_ref()).await;
    let mut states = BTreeMap::new();
    let before = server.request_count_for("/media/chat-img");
    for (r, t) in &refs {
        let (status, body) = download(&client, conn.as_ref(), r).await;
        match t.state {
            MediaState::Available => {
                assert_eq!(status, 200, "{r:?}");
                assert_eq!(hex::encode(Sha256::digest(&body)), t.sha256, "{r:?}");
                assert_eq!(body.len() as u64, t.size);
                if matches!(
                    r.kind,
                    AttachmentKind::Image | AttachmentKind::Sticker | AttachmentKind::Thumbnail
                ) {
                    assert_eq!(&body[..8], b"\x89PNG\r\n\x1a\n", "{r:?}");
                }
            }
            MediaState::Expired => assert_eq!(status, 403, "{r:?}"),
            MediaState::Deleted => assert_eq!(status, 404, "{r:?}"),
        }
        *states.entry(format!("{:?}", t.state)).or_insert(0) += 1;
    }
    assert_eq!(
        states.len(),
        3,
        "available, expired and deleted: {states:?}"
    );
    assert!(
        server.request_count_for("/media/chat-img") > before,
        "media requests are counted"
    );

    // without the Referer: 403, except on the signed host
    let mut signed = 0;
    let mut refused = 0;
    for (r, t) in refs
        .iter()
        .filter(|(_, t)| t.state == MediaState::Available)
    {
        let status = client.get(&r.url).send().await.unwrap().status().as_u16();
        if r.url.contains("/media/chat-storage1/") {
            assert_eq!(status, 200, "signed URLs need no Referer: {r:?}");
            signed += 1;
        } else {
            assert_eq!(status, 403, "{r:?} {t:?}");
            refused += 1;
        }
    }
    assert!(signed > 0 && refused > 0, "{signed} {refused}");

    // a signature that does not match its path or expiry: 403
    let (r, _) = refs
        .iter()
        .find(|(r, t)| r.url.contains("sign=") && t.state == MediaState::Available)
        .unwrap();
    let later = r.url.replace("&t=", "&t=9");
    assert_eq!(client.get(&later).send().await.unwrap().status(), 403);

    // the fake's armed failures reach media requests too
    let (r, _) = refs
        .iter()
        .find(|(_, t)| t.state == MediaState::Available)
        .unwrap();
    server.fail_request(1, RequestFailure::BadGateway);
    assert_eq!(download(&client, conn.as_ref(), r).await.0, 502);
    assert_eq!(download(&client, conn.as_ref(), r).await.0, 200);

    // a file deleted later is a 404 from then on
    assert!(server.world().delete_media(&r.url));
    assert_eq!(download(&client, conn.as_ref(), r).await.0, 404);
    server.shutdown().await;
}
