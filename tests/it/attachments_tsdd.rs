//! TangSengDaoDao attachments end to end, the connector's part: a fake world synced into a
//! real PostgreSQL, every stored version's files listed by the connector and compared with
//! the world, and each file downloaded as the connector says to (its preview path under the
//! API root, the 302 to the storage on another origin followed without credentials), its
//! bytes checked against the world's sha256. A deleted and an expired file fail as such.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chatvault::attachments::{AttachmentKind, AttachmentRef, MediaRequest};
use chatvault::config::{PlatformConfig, Secret, SourceConfig, TsddAuth, TsddConfig};
use chatvault::connector::http::HttpClient;
use chatvault::connector::{self, Connector};
use chatvault::model::{Content, MessageKind, SourceName};
use chatvault::sim::serve::RequestFailure;
use chatvault::sim::tangsengdaodao::{
    AttachmentTruth, MediaFate, MessageTruth, SimServer, World, WorldSpec,
};
use chatvault::sync::{sync_source, SyncOptions};
use sha2::{Digest, Sha256};

fn spec() -> WorldSpec {
    WorldSpec {
        seed: 11,
        users: 10,
        groups: 3,
        direct_chats: 5,
        messages: 900,
        ..WorldSpec::default()
    }
}

fn source(server: &SimServer) -> SourceConfig {
    let spec = spec();
    SourceConfig {
        name: SourceName::new("s"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(5),
        enabled: true,
        push: true,
        platform: PlatformConfig::Tangsengdaodao(TsddConfig {
            base_url: server.base_url(),
            auth: TsddAuth::Password {
                username: spec.me_username,
                password: Secret::new(spec.me_password),
            },
            device_flag: 1,
            page_size: 100,
        }),
    }
}

fn connector_for(src: &SourceConfig) -> Box<dyn Connector> {
    let http = HttpClient::new(0.0, Duration::from_secs(5)).unwrap();
    connector::build(src, http, None).unwrap()
}

/// What a download came to.
#[derive(Debug)]
struct Download {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
    /// The origins the request went to, in order.
    origins: Vec<String>,
}

/// Send `request` as the fetcher must: its headers on every hop, its credentials only to
/// the origin of its URL; redirects followed by hand (at most five), so the test sees each
/// hop's origin.
async fn download(request: &MediaRequest) -> Download {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let origin = request.url.origin();
    let mut url = request.url.clone();
    let mut origins = Vec::new();
    for _ in 0..5 {
        origins.push(url.origin().ascii_serialization());
        let mut builder = client.get(url.clone());
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if url.origin() == origin {
            for (name, value) in &request.credentials {
                builder = builder.header(name, value);
            }
        }
        let response = builder.send().await.unwrap();
        if response.status().is_redirection() {
            let location = response.headers()["location"].to_str().unwrap().to_string();
            url = url.join(&location).unwrap();
            continue;
        }
        return Download {
            status: response.status().as_u16(),
            content_type: response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string()),
            body: response.bytes().await.unwrap().to_vec(),
            origins,
        };
    }
    panic!("more than five redirects for {:?}", request);
}

/// Every version the archive holds: `(conversation, message, version) -> content`.
async fn stored_versions(
    store: &chatvault::store::Store,
) -> BTreeMap<(String, String, i32), serde_json::Value> {
    let rows: Vec<(String, String, i32, serde_json::Value)> = sqlx::query_as(
        "SELECT conversation_id, message_id, version, content FROM archive.message_versions",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(c, m, v, content)| ((c, m, v), content))
        .collect()
}

fn content(value: &serde_json::Value) -> Content {
    Content {
        kind: MessageKind::Other,
        text: String::new(),
        content: value.clone(),
    }
}

fn listed(refs: &[AttachmentRef]) -> Vec<(AttachmentKind, String)> {
    refs.iter().map(|r| (r.kind, r.url.clone())).collect()
}

fn expected(truth: &[AttachmentTruth]) -> Vec<(AttachmentKind, String)> {
    truth.iter().map(|a| (a.kind, a.url.clone())).collect()
}

#[tokio::test]
async fn every_stored_version_lists_its_files_and_each_downloads_with_the_worlds_digest() {
    let server = SimServer::start(World::generate(&spec())).await;
    let (store, _) = common::store().await;
    let src = source(&server);
    let options = SyncOptions {
        backoff_base: Duration::from_millis(5),
        max_backoff: Duration::from_millis(100),
        ..SyncOptions::default()
    };
    let result = sync_source(&store, &src, &options, None).await;
    assert!(result.ok(), "{:?}", result.error);
    let conn = connector_for(&src);
    let (truth, world_files) = {
        let world = server.world();
        let truth = world.truth();
        let mut files: BTreeMap<String, AttachmentTruth> = BTreeMap::new();
        for m in truth.iter().flat_map(|c| c.messages.iter()) {
            for a in &m.attachments {
                files.insert(a.url.clone(), a.clone());
            }
            if let Some(edit) = &m.content_edit {
                for a in world.attachments_of(edit) {
                    files.insert(a.url.clone(), a);
                }
            }
        }
        (truth, files)
    };
    let by_key: BTreeMap<(String, String), &MessageTruth> = truth
        .iter()
        .flat_map(|c| {
            c.messages
                .iter()
                .map(move |m| ((c.channel_id.clone(), m.message_id.clone()), m))
        })
        .collect();

    // 1. the files of every stored version are the ones the world's payloads name
    let versions = stored_versions(&store).await;
    let mut kinds = BTreeMap::<AttachmentKind, usize>::new();
    let mut forwards_with_files = 0;
    let mut references: BTreeMap<String, AttachmentRef> = BTreeMap::new();
    let mut compared = 0;
    for ((conversation, message, version), stored) in &versions {
        let m = by_key
            .get(&(conversation.clone(), message.clone()))
            .unwrap_or_else(|| panic!("{conversation}/{message} is not in the world"));
        let refs = conn.attachments(&content(stored));
        let want = match (*version, &m.content_edit) {
            (1, _) => m.attachments.clone(),
            (_, Some(edit)) => server.world().attachments_of(edit),
            (v, None) => panic!("{conversation}/{message} has version {v} but no edit"),
        };
        assert_eq!(
            listed(&refs),
            expected(&want),
            "{conversation}/{message} v{version}: {stored}"
        );
        compared += 1;
        if stored["type"] == 11 && !refs.is_empty() {
            forwards_with_files += 1;
        }
        for r in refs {
            *kinds.entry(r.kind).or_default() += 1;
            references.entry(r.url.clone()).or_insert(r);
        }
    }
    assert_eq!(compared, versions.len());
    assert!(compared > 500, "{compared} versions");
    for kind in [
        AttachmentKind::Image,
        AttachmentKind::File,
        AttachmentKind::Voice,
        AttachmentKind::Video,
        AttachmentKind::Thumbnail,
        AttachmentKind::Sticker,
    ] {
        assert!(
            kinds.get(&kind).copied().unwrap_or(0) > 0,
            "no {kind}: {kinds:?}"
        );
    }
    assert!(forwards_with_files > 0, "no merged forward with files");

    // what the payload declares reaches the reference
    for r in references.values() {
        match r.kind {
            AttachmentKind::Image => assert!(r.width.is_some() && r.height.is_some(), "{r:?}"),
            AttachmentKind::Voice => assert!(r.duration_ms.is_some_and(|d| d >= 1000), "{r:?}"),
            AttachmentKind::Video => {
                assert!(r.size.is_some() && r.duration_ms.is_some(), "{r:?}")
            }
            AttachmentKind::File => assert!(r.name.is_some() && r.size.is_some(), "{r:?}"),
            _ => {}
        }
    }

    // 2. each file, downloaded as the connector says, is the world's file
    let api_origin = reqwest::Url::parse(&server.base_url())
        .unwrap()
        .origin()
        .ascii_serialization();
    let before = server.request_count();
    for (url, reference) in &references {
        let request = conn.media_request(reference).await.unwrap();
        assert!(
            request.credentials.is_empty(),
            "{url}: the preview route is public"
        );
        assert!(
            request
                .url
                .as_str()
                .starts_with(&format!("{}/v1/file/preview/", server.base_url())),
            "{url} resolves to {}",
            request.url
        );
        let got = download(&request).await;
        let file = &world_files[url];
        assert_eq!(got.status, 200, "{url}");
        assert_eq!(
            got.origins.len(),
            2,
            "{url}: one redirect, {:?}",
            got.origins
        );
        assert_eq!(got.origins[0], api_origin);
        assert_ne!(
            got.origins[1], api_origin,
            "{url}: storage is another origin"
        );
        assert_eq!(hex::encode(Sha256::digest(&got.body)), file.sha256, "{url}");
        assert_eq!(got.body.len() as u64, file.size);
        assert_eq!(
            got.content_type.as_deref(),
            Some(file.content_type),
            "{url}"
        );
        if matches!(
            reference.kind,
            AttachmentKind::Image | AttachmentKind::Thumbnail
        ) {
            assert!(got.body.starts_with(b"\x89PNG\r\n\x1a\n"), "{url}");
        }
    }
    // the preview route and the storage both count
    assert_eq!(server.request_count() - before, 2 * references.len() as u64);
    let first = references.keys().next().unwrap();
    assert!(server.request_count_for(&format!("/v1/{first}")) >= 1);
}

#[tokio::test]
async fn a_file_deleted_from_storage_and_an_expired_url_fail_as_such() {
    let server = SimServer::start(World::generate(&spec())).await;
    let (gone, expired) = server.world().break_media();
    let (gone, expired) = (gone.unwrap(), expired.unwrap());
    let fates: BTreeMap<String, MediaFate> = server
        .world()
        .truth()
        .iter()
        .flat_map(|c| c.messages.iter())
        .flat_map(|m| m.attachments.iter())
        .map(|a| (a.url.clone(), a.fate))
        .collect();
    assert_eq!(fates[&gone], MediaFate::Gone);
    assert_eq!(fates[&expired], MediaFate::Expired);
    let served: BTreeSet<_> = fates
        .iter()
        .filter(|(_, f)| **f == MediaFate::Served)
        .map(|(u, _)| u.clone())
        .collect();
    assert_eq!(served.len(), fates.len() - 2);

    let conn = connector_for(&source(&server));
    let get = |url: String, kind| {
        let conn = &conn;
        async move {
            let request = conn
                .media_request(&AttachmentRef::new(kind, url))
                .await
                .unwrap();
            download(&request).await
        }
    };
    let got = get(gone.clone(), AttachmentKind::File).await;
    assert_eq!(got.status, 404, "{gone}");
    let body = String::from_utf8_lossy(&got.body).to_string();
    assert!(body.contains("<Code>NoSuchKey</Code>"), "{body}");

    let got = get(expired.clone(), AttachmentKind::Image).await;
    assert_eq!(got.status, 403, "{expired}");
    let body = String::from_utf8_lossy(&got.body).to_string();
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    assert!(body.contains("Request has expired"), "{body}");

    // a path the storage never held is missing too; one it holds is still served
    let got = get(
        "file/preview/chat/2/nowhere/not-a-file.png".into(),
        AttachmentKind::Image,
    )
    .await;
    assert_eq!(got.status, 404);
    let got = get(served.first().unwrap().clone(), AttachmentKind::Image).await;
    assert_eq!(got.status, 200);

    // an armed failure fires on the preview route like on any other
    server.fail_request(1, RequestFailure::BadGateway);
    let got = get(served.first().unwrap().clone(), AttachmentKind::Image).await;
    assert_eq!(got.status, 502);
    assert!(!server.failure_pending());
}

#[tokio::test]
async fn an_absolute_url_is_asked_for_as_it_is() {
    let server = SimServer::start(World::generate(&spec())).await;
    let conn = connector_for(&source(&server));
    let request = conn
        .media_request(&AttachmentRef::new(
            AttachmentKind::Image,
            "https://cdn.example.com/a.png?sign=1",
        ))
        .await
        .unwrap();
    assert_eq!(request.url.as_str(), "https://cdn.example.com/a.png?sign=1");
    assert!(request.credentials.is_empty() && request.headers.is_empty());
    let refused = conn
        .media_request(&AttachmentRef::new(AttachmentKind::File, "httpfoo://x/y"))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("httpfoo://x/y"), "{refused}");
}
