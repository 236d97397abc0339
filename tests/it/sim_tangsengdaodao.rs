//! The fake TangSengDaoDao server over real HTTP: auth, windows, ids, extras, reactions,
//! faults and deterministic generation.

use std::time::{Duration, Instant};

use chatvault::sim::tangsengdaodao::{
    ChannelKey, Malformed, SimServer, World, WorldSpec, GROUP, PERSON, SYSTEM_UID,
};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const CHANNEL_SYNC: &str = "/v1/message/channel/sync";

fn small_spec(seed: u64) -> WorldSpec {
    WorldSpec {
        seed,
        users: 12,
        groups: 3,
        direct_chats: 4,
        messages: 600,
        ..WorldSpec::default()
    }
}

struct Harness {
    server: SimServer,
    http: Client,
    token: String,
}

impl Harness {
    async fn start(world: World) -> Harness {
        let server = SimServer::start(world).await;
        let http = Client::new();
        let (username, password) = {
            let w = server.world();
            (w.me().username.clone(), w.me().password.clone())
        };
        let response = http
            .post(format!("{}/v1/user/login", server.base_url()))
            .json(&json!({"username": username, "password": password, "flag": 1,
                          "device": {"device_id": "tsdd-archiver-test", "device_name": "t", "device_model": "t"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        let token = body["token"].as_str().unwrap().to_string();
        Harness {
            server,
            http,
            token,
        }
    }

    async fn post_raw(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.server.base_url()))
            .header("token", &self.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let response = self.post_raw(path, body).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.server.base_url()))
            .header("token", &self.token)
            .send()
            .await
            .unwrap()
    }

    async fn channel_sync(
        &self,
        id: &str,
        kind: u8,
        start: u32,
        end: u32,
        limit: i64,
        pull_mode: i64,
    ) -> Value {
        self.post(
            CHANNEL_SYNC,
            json!({"channel_id": id, "channel_type": kind, "start_message_seq": start,
                   "end_message_seq": end, "limit": limit, "pull_mode": pull_mode}),
        )
        .await
    }

    fn me(&self) -> String {
        self.server.world().me().uid.clone()
    }

    /// (channel_id as requested, type, last seq) of the busiest conversation of `kind`.
    fn busiest(&self, kind: u8) -> (String, u8, u32) {
        let world = self.server.world();
        let me = world.me().uid.clone();
        world
            .channels()
            .iter()
            .filter(|c| c.key().channel_type == kind && world.is_member(c.key(), &me))
            .max_by_key(|c| c.last_seq())
            .map(|c| (c.key().id_for(&me), kind, c.last_seq()))
            .unwrap()
    }
}

fn seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn login_gives_a_token_used_in_the_token_header() {
    let h = Harness::start(World::generate(&small_spec(1))).await;
    let ok = h
        .post_raw(
            "/v1/conversation/sync",
            json!({"version": 0, "last_msg_seqs": "", "msg_count": 1}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::OK);

    // Web login again reuses the cached token.
    let (username, password) = {
        let w = h.server.world();
        (w.me().username.clone(), w.me().password.clone())
    };
    let login = |password: String, flag: u8| {
        h.http
            .post(format!("{}/v1/user/login", h.server.base_url()))
            .json(&json!({"username": username, "password": password, "flag": flag}))
            .send()
    };
    let again: Value = login(password.clone(), 1)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["token"], json!(h.token));
    assert_eq!(again["uid"], json!(h.me()));

    // APP login (flag 0) always issues a new token and logs the previous APP token out.
    let app1: Value = login(password.clone(), 0)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let app2: Value = login(password.clone(), 0)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(app1["token"], app2["token"]);
    assert_ne!(app1["token"], json!(h.token));
    let stale = h
        .http
        .get(format!("{}/v1/group/my", h.server.base_url()))
        .header("token", app1["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);

    let wrong = login("nope".into(), 1).await.unwrap();
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["status"], json!(400));
    assert!(body["msg"].is_string());

    // Bearer is not how TSDD authenticates.
    let bearer = h
        .http
        .post(format!("{}/v1/conversation/sync", h.server.base_url()))
        .header("Authorization", format!("Bearer {}", h.token))
        .json(&json!({"msg_count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_and_expired_tokens_answer_401_without_status() {
    let mut h = Harness::start(World::generate(&small_spec(2))).await;
    let me = h.me();
    let check_401 = |response: reqwest::Response| async move {
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: Value = response.json().await.unwrap();
        assert!(body["msg"].is_string());
        assert!(body.get("status").is_none(), "{body}");
    };
    let good = h.token.clone();
    h.token = "not-a-token".into();
    check_401(h.get(&format!("/v1/users/{me}")).await).await;
    h.token = good;
    assert_eq!(
        h.get(&format!("/v1/users/{me}")).await.status(),
        StatusCode::OK
    );

    h.server.world().expire_tokens();
    check_401(h.get(&format!("/v1/users/{me}")).await).await;
    check_401(
        h.post_raw(CHANNEL_SYNC, json!({"channel_id": "x", "channel_type": 2}))
            .await,
    )
    .await;
}

#[tokio::test]
async fn unknown_routes_are_plain_404() {
    let h = Harness::start(World::generate(&small_spec(3))).await;
    for response in [h.get("/v1/nope").await, h.get(CHANNEL_SYNC).await] {
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.text().await.unwrap(), "404 page not found");
    }
}

#[tokio::test]
async fn channel_sync_windows_are_ascending_and_never_say_more() {
    let h = Harness::start(World::generate(&small_spec(4))).await;
    let (id, kind, last) = h.busiest(GROUP);
    assert!(last >= 60, "busiest group has {last}");

    let up = h.channel_sync(&id, kind, 11, 31, 20, 1).await;
    assert_eq!(seqs(&up), (11..31).collect::<Vec<_>>());
    assert_eq!(up["more"], json!(0));
    assert_eq!(up["pull_mode"], json!(0));
    assert_eq!(up["start_message_seq"], json!(11));
    assert_eq!(up["end_message_seq"], json!(31));

    let up_limited = h.channel_sync(&id, kind, 11, 31, 5, 1).await;
    assert_eq!(seqs(&up_limited), vec![11, 12, 13, 14, 15]);

    let down = h.channel_sync(&id, kind, 50, 40, 100, 0).await;
    assert_eq!(seqs(&down), (41..=50).collect::<Vec<_>>());
    let down_limited = h.channel_sync(&id, kind, 50, 0, 3, 0).await;
    assert_eq!(seqs(&down_limited), vec![48, 49, 50]);
    let down_inverted = h.channel_sync(&id, kind, 40, 50, 100, 0).await;
    assert!(seqs(&down_inverted).is_empty());

    let latest = h.channel_sync(&id, kind, 0, 0, 4, 1).await;
    let l = u64::from(last);
    assert_eq!(seqs(&latest), vec![l - 3, l - 2, l - 1, l]);

    // limit 0: empty for latest and down, everything to the end for up.
    assert!(seqs(&h.channel_sync(&id, kind, 0, 0, 0, 0).await).is_empty());
    assert!(seqs(&h.channel_sync(&id, kind, 50, 0, 0, 0).await).is_empty());
    assert_eq!(
        seqs(&h.channel_sync(&id, kind, 5, 0, 0, 1).await),
        (5..=l).collect::<Vec<_>>()
    );
    // Seqs past the end are cut off.
    assert!(seqs(&h.channel_sync(&id, kind, last + 1, 0, 10, 1).await).is_empty());
}

#[tokio::test]
async fn cleared_history_gives_short_pages_mid_history() {
    let h = Harness::start(World::generate(&small_spec(5))).await;
    let (id, kind, _) = h.busiest(GROUP);
    h.server
        .world()
        .clear_history_for_me(&ChannelKey::group(&id), 30);
    let page = h.channel_sync(&id, kind, 21, 41, 20, 1).await;
    assert_eq!(seqs(&page), (31..41).collect::<Vec<_>>());
    let hidden = h.channel_sync(&id, kind, 1, 21, 20, 1).await;
    assert!(seqs(&hidden).is_empty());
    let after = h.channel_sync(&id, kind, 41, 61, 20, 1).await;
    assert_eq!(seqs(&after).len(), 20);
}

#[tokio::test]
async fn message_ids_above_2_pow_53_are_exact() {
    let h = Harness::start(World::generate(&small_spec(6))).await;
    let (id, kind, _) = h.busiest(PERSON);
    let raw = h
        .post_raw(CHANNEL_SYNC, json!({"channel_id": id, "channel_type": kind,
                                       "start_message_seq": 1, "end_message_seq": 50, "limit": 49, "pull_mode": 1}))
        .await
        .text()
        .await
        .unwrap();
    let page: Value = serde_json::from_str(&raw).unwrap();
    let messages = page["messages"].as_array().unwrap();
    assert!(!messages.is_empty());
    for m in messages {
        let as_number = m["message_id"].as_u64().expect("message_id is an integer");
        let as_string: u64 = m["message_idstr"].as_str().unwrap().parse().unwrap();
        assert_eq!(as_number, as_string);
        assert!(as_number > 1 << 53);
        assert!(raw.contains(&format!("\"message_id\":{as_number}")));
        let truth = h
            .server
            .world()
            .message(as_number)
            .map(|(_, m)| m.message_id);
        assert_eq!(truth, Some(as_number));
    }
}

#[tokio::test]
async fn person_channel_id_alternates_with_the_sender() {
    let h = Harness::start(World::generate(&small_spec(7))).await;
    let me = h.me();
    let (peer, kind, last) = h.busiest(PERSON);
    let page = h.channel_sync(&peer, kind, 1, 0, i64::from(last), 1).await;
    let (mut mine, mut theirs) = (0, 0);
    for m in page["messages"].as_array().unwrap() {
        if m["from_uid"] == json!(me) {
            assert_eq!(m["channel_id"], json!(peer));
            mine += 1;
        } else {
            assert_eq!(m["from_uid"], json!(peer));
            assert_eq!(m["channel_id"], json!(me));
            theirs += 1;
        }
    }
    assert!(mine > 0 && theirs > 0, "mine {mine}, theirs {theirs}");
}

#[tokio::test]
async fn conversation_sync_lists_new_messages_only() {
    let h = Harness::start(World::generate(&small_spec(8))).await;
    let empty = h
        .post(
            "/v1/conversation/sync",
            json!({"version": 0, "last_msg_seqs": "", "msg_count": 0}),
        )
        .await;
    assert_eq!(empty["conversations"], json!([]));

    let all = h
        .post(
            "/v1/conversation/sync",
            json!({"version": 0, "last_msg_seqs": "", "msg_count": 3}),
        )
        .await;
    let conversations = all["conversations"].as_array().unwrap();
    assert!(conversations.len() >= 5);
    let mut seqs_known = Vec::new();
    for c in conversations {
        let recents = c["recents"].as_array().unwrap();
        assert!(!recents.is_empty() && recents.len() <= 3);
        let s: Vec<u64> = recents
            .iter()
            .map(|m| m["message_seq"].as_u64().unwrap())
            .collect();
        assert!(s.windows(2).all(|w| w[0] > w[1]), "newest first: {s:?}");
        assert_eq!(c["last_msg_seq"].as_u64(), Some(s[0]));
        assert!(recents.iter().all(|m| m["extra_version"] == json!(0)));
        assert!(recents
            .iter()
            .filter_map(|m| m.get("message_extra"))
            .all(|e| e["extra_version"] == json!(0)));
        seqs_known.push(format!(
            "{}:{}:{}",
            c["channel_id"].as_str().unwrap(),
            c["channel_type"],
            s[0]
        ));
    }
    assert!(!all["users"].as_array().unwrap().is_empty());
    assert!(!all["groups"].as_array().unwrap().is_empty());

    let last_msg_seqs = seqs_known.join("|") + "|garbage|x:1";
    let none = h
        .post(
            "/v1/conversation/sync",
            json!({"version": 0, "last_msg_seqs": last_msg_seqs, "msg_count": 1}),
        )
        .await;
    assert_eq!(none["conversations"], json!([]));

    let (group, _, _) = h.busiest(GROUP);
    let me = h.me();
    h.server.world().post_message(
        &ChannelKey::group(&group),
        &me,
        json!({"type": 1, "content": "新消息"}),
    );
    let one = h
        .post(
            "/v1/conversation/sync",
            json!({"version": 0, "last_msg_seqs": last_msg_seqs, "msg_count": 1}),
        )
        .await;
    let listed = one["conversations"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["channel_id"], json!(group));

    // Removed from the group: gone from conversations, and channel sync is empty.
    h.server.world().remove_me_from_group(&group);
    let after = h
        .post(
            "/v1/conversation/sync",
            json!({"version": 0, "last_msg_seqs": "", "msg_count": 1}),
        )
        .await;
    assert!(after["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["channel_id"] != json!(group)));
    let page = h.channel_sync(&group, GROUP, 1, 50, 20, 1).await;
    assert_eq!(page["messages"], json!([]));
    assert_eq!(page["start_message_seq"], json!(50));
    assert_eq!(page["end_message_seq"], json!(50));
}

#[tokio::test]
async fn extra_sync_versions_and_the_server_cursor_cache() {
    let h = Harness::start(World::generate(&small_spec(9))).await;
    let (group, _, _) = h.busiest(GROUP);
    let key = ChannelKey::group(&group);
    let ids: Vec<u64> = {
        let w = h.server.world();
        w.channel(&key)
            .unwrap()
            .messages()
            .iter()
            .take(6)
            .map(|m| m.message_id)
            .collect()
    };
    {
        let mut w = h.server.world();
        let me = w.me().uid.clone();
        assert!(w.edit(ids[0], &json!({"type": 1, "content": "改过了"})));
        assert!(
            !w.edit(ids[0], &json!({"type": 1, "content": "改过了"})),
            "identical edit is ignored"
        );
        w.revoke(ids[1], &me);
        w.mutual_delete(ids[2]);
        w.edit(ids[3], &json!({"type": 1, "content": "v1"}));
        w.edit(ids[3], &json!({"type": 1, "content": "v2"}));
    }
    let sync = |version: i64, source: &'static str, limit: i64| {
        h.post(
            "/v1/message/extra/sync",
            json!({"channel_id": group, "channel_type": 2,
               "extra_version": version, "source": source, "limit": limit}),
        )
    };
    let versions = |rows: &Value| -> Vec<i64> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r["extra_version"].as_i64().unwrap())
            .collect()
    };

    let everything = sync(1, "archiver-a", 10_000).await;
    let all_versions = versions(&everything);
    assert!(all_versions.windows(2).all(|w| w[0] < w[1]), "ascending");
    let row_of = |id: u64| {
        everything
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["message_id_str"] == json!(id.to_string()))
            .cloned()
            .unwrap()
    };
    let edited = row_of(ids[3]);
    assert_eq!(edited["content_edit"], json!({"type": 1, "content": "v2"}));
    assert!(edited["edited_at"].as_i64().unwrap() > 0);
    assert!(edited.get("revoke").is_none() && edited.get("is_mutual_deleted").is_none());
    assert_eq!(row_of(ids[1])["revoke"], json!(1));
    assert_eq!(row_of(ids[2])["is_mutual_deleted"], json!(1));
    assert_eq!(row_of(ids[2])["message_id"].as_u64(), Some(ids[2]));

    // Version 0 gives the newest `limit` rows, ascending.
    let newest = sync(0, "archiver-b", 2).await;
    assert_eq!(
        versions(&newest),
        all_versions[all_versions.len() - 2..].to_vec()
    );

    // Paging by version.
    let first = sync(1, "archiver-c", 2).await;
    assert_eq!(versions(&first), all_versions[..2].to_vec());
    let second = sync(versions(&first)[1], "archiver-c", 2).await;
    assert_eq!(versions(&second), all_versions[2..4].to_vec());

    // The cursor for (user, source, channel) never moves back: it keeps the highest
    // version requested, so asking for 1 again continues from that checkpoint.
    let rewind = sync(1, "archiver-c", 2).await;
    assert_eq!(versions(&rewind), all_versions[2..4].to_vec());
    let fresh = sync(1, "archiver-d", 2).await;
    assert_eq!(versions(&fresh), all_versions[..2].to_vec());

    // Blank channel id is refused.
    let blank = h
        .post_raw(
            "/v1/message/extra/sync",
            json!({"channel_id": " ", "channel_type": 2}),
        )
        .await;
    assert_eq!(blank.status(), StatusCode::BAD_REQUEST);
    let body: Value = blank.json().await.unwrap();
    assert_eq!(body["status"], json!(400));
}

#[tokio::test]
async fn reaction_toggle_shows_as_removal_row_with_higher_seq() {
    let h = Harness::start(World::generate(&small_spec(10))).await;
    let (peer, _, _) = h.busiest(PERSON);
    let me = h.me();
    let key = ChannelKey::person(&me, &peer);
    let message_id = h.server.world().channel(&key).unwrap().messages()[0].message_id;
    let sync = |seq: i64, limit: u64| {
        h.post(
            "/v1/reaction/sync",
            json!({"channel_id": peer, "channel_type": 1, "seq": seq, "limit": limit}),
        )
    };
    let before = sync(1, 1000).await;
    let top = before
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .max()
        .unwrap_or(0);

    let added = h.server.world().toggle_reaction(message_id, &me, "👍");
    let rows = sync(top.max(1), 1000).await;
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["is_deleted"], json!(0));
    assert_eq!(rows[0]["seq"].as_i64(), Some(added.seq));
    assert!(added.seq >= 1_000_001);
    assert_eq!(rows[0]["channel_id"], json!(peer));
    assert_eq!(rows[0]["message_id"], json!(message_id.to_string()));
    let created_at = rows[0]["created_at"].as_str().unwrap();
    assert_eq!(created_at.len(), 19, "{created_at}");
    assert_eq!(&created_at[4..5], "-");
    assert_eq!(&created_at[10..11], " ");

    let removed = h.server.world().toggle_reaction(message_id, &me, "👍");
    let rows = sync(added.seq, 1000).await;
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["is_deleted"], json!(1));
    assert!(removed.seq > added.seq);
    assert_eq!(rows[0]["seq"].as_i64(), Some(removed.seq));
    assert_eq!(rows[0]["created_at"].as_str(), Some(created_at));

    // A different emoji replaces in place (revives).
    let swapped = h.server.world().toggle_reaction(message_id, &me, "🎉");
    assert!(!swapped.is_deleted && swapped.seq > removed.seq);

    // The message carries the row too.
    let page = h.channel_sync(&peer, 1, 1, 2, 1, 1).await;
    let reactions = page["messages"][0]["reactions"].as_array().unwrap();
    assert!(reactions
        .iter()
        .any(|r| r["uid"] == json!(me) && r["emoji"] == json!("🎉")));

    // seq <= 0: newest first, descending.
    let newest = sync(0, 3).await;
    let s: Vec<i64> = newest
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(s[0], swapped.seq);
    assert!(s.windows(2).all(|w| w[0] > w[1]), "{s:?}");
}

#[tokio::test]
async fn reply_to_an_edited_message_shows_the_edit_and_a_bad_reply_id_panics() {
    let h = Harness::start(World::generate(&small_spec(11))).await;
    let me = h.me();
    let (group, _, _) = h.busiest(GROUP);
    let key = ChannelKey::group(&group);
    let (quoted, reply) = {
        let mut w = h.server.world();
        let quoted = w.post_message(&key, &me, json!({"type": 1, "content": "原文"}));
        let reply = w.post_message(&key, &me, json!({"type": 1, "content": "回复",
            "reply": {"message_id": quoted.message_id.to_string(), "message_seq": quoted.message_seq,
                      "from_uid": me, "from_name": "me", "payload": {"type": 1, "content": "原文"}}}));
        w.edit(quoted.message_id, &json!({"type": 1, "content": "改后"}));
        (quoted, reply)
    };
    let page = h
        .channel_sync(&group, GROUP, reply.message_seq, 0, 1, 1)
        .await;
    assert_eq!(
        page["messages"][0]["payload"]["reply"]["payload"]["content"],
        json!("改后")
    );
    assert_eq!(
        h.server
            .world()
            .message(reply.message_id)
            .unwrap()
            .1
            .payload["reply"]["payload"]["content"],
        json!("原文")
    );

    let bad = h.server.world().post_message(
        &key,
        &me,
        json!({"type": 1, "content": "x",
        "reply": {"message_id": quoted.message_id, "message_seq": quoted.message_seq}}),
    );
    let response = h
        .post_raw(CHANNEL_SYNC, json!({"channel_id": group, "channel_type": 2,
                  "start_message_seq": bad.message_seq, "end_message_seq": 0, "limit": 10, "pull_mode": 1}))
        .await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn users_and_groups_endpoints() {
    let h = Harness::start(World::generate(&small_spec(12))).await;
    let me = h.me();
    let user: Value = h
        .get(&format!("/v1/users/{me}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(user["uid"], json!(me));
    assert!(user.get("phone").is_some());
    let unknown = h.get("/v1/users/nobody").await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    let (group, _, _) = h.busiest(GROUP);
    let g: Value = h
        .get(&format!("/v1/groups/{group}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(g["group_no"], json!(group));
    assert_eq!(g["quit"], json!(0));
    let missing = h.get("/v1/groups/nope").await;
    assert_eq!(missing.status(), StatusCode::OK);
    assert_eq!(missing.text().await.unwrap(), "null");
    let saved: Value = h.get("/v1/group/my").await.json().await.unwrap();
    assert!(saved.is_array());
}

#[tokio::test]
async fn faults_are_observable_by_a_client() {
    let h = Harness::start(World::generate(&small_spec(13))).await;
    let (group, _, _) = h.busiest(GROUP);
    let faults = h.server.faults();
    let page_body = json!({"channel_id": group, "channel_type": 2, "start_message_seq": 1,
                           "end_message_seq": 21, "limit": 20, "pull_mode": 1});

    faults.rate_limit(Some(CHANNEL_SYNC), 1, 7);
    // Scoped: another path is unaffected.
    assert_eq!(h.get("/v1/group/my").await.status(), StatusCode::OK);
    let limited = h.post_raw(CHANNEL_SYNC, page_body.clone()).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "7");
    assert_eq!(
        h.post_raw(CHANNEL_SYNC, page_body.clone()).await.status(),
        StatusCode::OK
    );

    faults.status(None, 1, 500);
    let failed = h.post_raw(CHANNEL_SYNC, page_body.clone()).await;
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(failed.bytes().await.unwrap().is_empty());
    faults.status(Some(CHANNEL_SYNC), 2, 502);
    assert_eq!(
        h.post_raw(CHANNEL_SYNC, page_body.clone()).await.status(),
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        h.post_raw(CHANNEL_SYNC, page_body.clone()).await.status(),
        StatusCode::BAD_GATEWAY
    );
    faults.status(Some(CHANNEL_SYNC), 1, 503);
    assert_eq!(
        h.post_raw(CHANNEL_SYNC, page_body.clone()).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(faults.pending(), 0);

    faults.slow(Some(CHANNEL_SYNC), 1, Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(
        h.post_raw(CHANNEL_SYNC, page_body.clone()).await.status(),
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    faults.drop_mid_body(Some(CHANNEL_SYNC), 1);
    let dropped = h.post_raw(CHANNEL_SYNC, page_body.clone()).await;
    assert_eq!(dropped.status(), StatusCode::OK);
    assert!(dropped.bytes().await.is_err(), "body must be cut off");
    assert_eq!(
        h.post(CHANNEL_SYNC, page_body.clone()).await["messages"]
            .as_array()
            .unwrap()
            .len(),
        20
    );

    faults.malformed(1, Malformed::SeqAsString);
    let bad = h.post(CHANNEL_SYNC, page_body.clone()).await;
    let broken = bad["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["message_seq"].is_string())
        .count();
    assert_eq!(broken, 1);
    faults.malformed(1, Malformed::PayloadNotObject);
    let bad = h.post(CHANNEL_SYNC, page_body.clone()).await;
    assert_eq!(
        bad["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| !m["payload"].is_object())
            .count(),
        1
    );
    let good = h.post(CHANNEL_SYNC, page_body.clone()).await;
    assert!(good["messages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["message_seq"].is_u64()));

    faults.fail_channel(&group);
    for _ in 0..3 {
        let refused = h.post_raw(CHANNEL_SYNC, page_body.clone()).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["status"], json!(400));
    }
    let (other, kind, _) = h.busiest(PERSON);
    assert_eq!(
        seqs(&h.channel_sync(&other, kind, 1, 3, 2, 1).await),
        vec![1, 2]
    );
    faults.clear();
    assert_eq!(
        h.post_raw(CHANNEL_SYNC, page_body).await.status(),
        StatusCode::OK
    );

    assert!(h.server.request_count_for(CHANNEL_SYNC) >= 15);
    assert!(h.server.request_count() > h.server.request_count_for(CHANNEL_SYNC));
}

#[tokio::test]
async fn server_serves_random_activity_while_running() {
    let h = Harness::start(World::generate(&small_spec(14))).await;
    let done = {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        h.server.world().random_activity(&mut rng, 200)
    };
    assert_eq!(done.len(), 200);
    let all = h
        .post(
            "/v1/conversation/sync",
            json!({"version": 0, "last_msg_seqs": "", "msg_count": 1}),
        )
        .await;
    assert!(!all["conversations"].as_array().unwrap().is_empty());
    let server = h.server;
    server.shutdown().await;
}

#[test]
fn generation_is_deterministic_and_mixed() {
    let spec = small_spec(42);
    let a = serde_json::to_string(&World::generate(&spec).truth()).unwrap();
    let b = serde_json::to_string(&World::generate(&spec).truth()).unwrap();
    assert_eq!(a, b);
    let c = serde_json::to_string(&World::generate(&small_spec(43)).truth()).unwrap();
    assert_ne!(a, c);

    let world = World::generate(&WorldSpec {
        messages: 5_000,
        ..small_spec(42)
    });
    assert_eq!(world.message_count(), 5_000);
    let truth = world.truth();
    let messages: Vec<_> = truth.iter().flat_map(|c| c.messages.iter()).collect();
    let has_type = |t: i64| messages.iter().any(|m| m.payload["type"] == json!(t));
    for t in [1, 2, 3, 4, 5, 6, 7, 8, 11, 1001, 1002] {
        assert!(has_type(t), "no payload of type {t}");
    }
    assert!(messages.iter().any(|m| m.payload["type"]
        .as_i64()
        .is_some_and(|t| [15, 17, 42, 3001].contains(&t))));
    assert!(messages.iter().any(|m| m.payload.get("reply").is_some()));
    assert!(messages.iter().any(|m| m.payload.get("mention").is_some()));
    assert!(messages
        .iter()
        .filter(|m| m.payload["type"] == json!(1001))
        .all(|m| m.from_uid.is_empty()));
    assert!(messages.iter().any(|m| m.content_edit.is_some()));
    assert!(messages.iter().any(|m| m.revoked));
    assert!(messages.iter().any(|m| m.mutually_deleted));
    assert!(messages
        .iter()
        .any(|m| m.reactions.iter().any(|r| r.is_deleted)));
    assert!(messages.iter().any(|m| m.payload["content"]
        .as_str()
        .is_some_and(|s| s.chars().any(|c| c > '\u{4e00}'))));
    assert!(messages.iter().any(|m| m.payload["content"]
        .as_str()
        .is_some_and(|s| s.contains(" the "))));
    assert_eq!(SYSTEM_UID, "____system");
}

#[tokio::test]
async fn a_large_world_generates_and_serves_quickly() {
    let started = Instant::now();
    let world = World::generate(&WorldSpec {
        seed: 7,
        users: 400,
        groups: 40,
        direct_chats: 160,
        messages: 200_000,
        ..WorldSpec::default()
    });
    let generated = started.elapsed();
    assert_eq!(world.message_count(), 200_000);
    // A debug build; a release build is several times faster.
    assert!(generated < Duration::from_secs(60), "{generated:?}");

    let h = Harness::start(world).await;
    let (id, kind, last) = h.busiest(GROUP);
    let started = Instant::now();
    let mut seen = 0;
    let mut from = 1;
    while from <= last {
        seen += seqs(&h.channel_sync(&id, kind, from, from + 500, 500, 1).await).len();
        from += 500;
    }
    assert_eq!(seen, last as usize);
    let walked = started.elapsed();
    let started = Instant::now();
    let all = h
        .post(
            "/v1/conversation/sync",
            json!({"version": 0, "last_msg_seqs": "", "msg_count": 1}),
        )
        .await;
    assert_eq!(all["conversations"].as_array().unwrap().len(), 201);
    eprintln!(
        "generated 200000 messages in {generated:?}; walked {last} messages in {walked:?}; \
         conversation sync in {:?}",
        started.elapsed()
    );
}
