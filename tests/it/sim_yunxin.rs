//! The fake Yunxin server over real HTTP: signatures, the envelope, paging quirks, both
//! readings of `descending`, removals, quick comments, rate limits and generation.

use std::time::Duration;

use chatvault::sim::yunxin::{
    checksum, now_ms, Descending, SimServer, World, WorldSpec, FIRST_SERVER_ID, HISTORY_PATH,
    QUICK_COMMENT_PATH,
};
use reqwest::Client;
use serde_json::{json, Value};

fn spec() -> WorldSpec {
    WorldSpec {
        seed: 3,
        messages: 800,
        end_ms: now_ms() - 3_600_000,
        days: 10,
        same_ms_run: 150,
        accounts_without_cloud: 1,
        ..WorldSpec::default()
    }
}

fn world() -> World {
    let mut w = World::generate(&spec());
    w.behaviour.rate_limit = None;
    w
}

struct H {
    server: SimServer,
    http: Client,
    key: String,
    secret: String,
}

impl H {
    async fn start(world: World) -> H {
        let (key, secret) = (world.app_key.clone(), world.app_secret.clone());
        H {
            server: SimServer::start(world).await,
            http: Client::new(),
            key,
            secret,
        }
    }

    fn signed(
        &self,
        method: reqwest::Method,
        path: &str,
        secret: &str,
        cur: i64,
    ) -> reqwest::RequestBuilder {
        let nonce = "4tgggergigwow323t23t";
        let cur = cur.to_string();
        self.http
            .request(method, format!("{}{path}", self.server.base_url()))
            .header("AppKey", &self.key)
            .header("Nonce", nonce)
            .header("CurTime", &cur)
            .header("CheckSum", checksum(secret, nonce, &cur))
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> Value {
        let now = chrono::Utc::now().timestamp();
        let r = self
            .signed(reqwest::Method::GET, path, &self.secret, now)
            .query(query)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "business errors come with HTTP 200");
        r.json().await.unwrap()
    }

    /// Every item of one history read, following `next_token`; also the page sizes.
    async fn read_all(&self, conv: &str, desc: &str) -> (Vec<Value>, Vec<usize>) {
        let path = format!(
            "/im/v2.1/conversations/{}/messages",
            conv.replace('|', "%7C")
        );
        let mut token = String::new();
        let mut items = Vec::new();
        let mut sizes = Vec::new();
        let end = now_ms().to_string();
        loop {
            let mut q = vec![
                ("begin_time", "0".to_string()),
                ("end_time", end.clone()),
                ("limit", "100".to_string()),
                ("descending", desc.to_string()),
                ("include_no_sense_msg", "true".to_string()),
            ];
            if !token.is_empty() {
                q.push(("page_token", token.clone()));
            }
            let v = self.get(&path, &q).await;
            assert_eq!(v["code"], 200, "{v}");
            let page = v["data"]["items"].as_array().unwrap();
            sizes.push(page.len());
            items.extend(page.iter().cloned());
            if !v["data"]["has_more"].as_bool().unwrap() {
                return (items, sizes);
            }
            token = v["data"]["next_token"].as_str().unwrap().to_string();
        }
    }
}

fn busiest(w: &World) -> String {
    w.conversations
        .keys()
        .max_by_key(|id| w.visible_ids(id).len())
        .unwrap()
        .clone()
}

#[tokio::test]
async fn signatures_are_checked_with_a_five_minute_window() {
    let h = H::start(world()).await;
    let now = chrono::Utc::now().timestamp();
    let q = [("account_id", "acc00")];
    for (secret, at, ok) in [
        (h.secret.clone(), now, true),
        (h.secret.clone(), now - 290, true),
        ("wrong".to_string(), now, false),
        (h.secret.clone(), now - 400, false),
        (h.secret.clone(), now + 400, false),
    ] {
        let v: Value = h
            .signed(reqwest::Method::GET, "/im/v2.1/conversations", &secret, at)
            .query(&q)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["code"] == 200, ok, "{v}");
        if !ok {
            assert_eq!(v["code"], 414);
        }
    }
    // no headers at all
    let v: Value = h
        .http
        .get(format!(
            "{}/im/v2.1/conversations?account_id=acc00",
            h.server.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["code"], 414);
}

#[tokio::test]
async fn history_pages_are_opaque_short_and_complete_in_both_orders() {
    for (mode, flag, ascending) in [
        (Descending::DocLiteral, "true", true),
        (Descending::DocLiteral, "false", false),
        (Descending::NameLiteral, "true", false),
        (Descending::NameLiteral, "false", true),
    ] {
        let mut w = world();
        w.behaviour.descending = mode;
        let conv = busiest(&w);
        let expected = w.visible_ids(&conv).len();
        let h = H::start(w).await;
        let (items, sizes) = h.read_all(&conv, flag).await;
        assert_eq!(items.len(), expected, "{mode:?} {flag}");
        // a short page while has_more was still true
        assert!(
            sizes[..sizes.len() - 1].iter().any(|&n| n < 100),
            "{sizes:?}"
        );
        let times: Vec<i64> = items
            .iter()
            .map(|i| i["create_time"].as_i64().unwrap())
            .collect();
        let mut sorted = times.clone();
        sorted.sort();
        if !ascending {
            sorted.reverse();
        }
        assert_eq!(times, sorted, "{mode:?} {flag}");
        // ids above 2^53 as bare integers, each once
        let ids: std::collections::BTreeSet<i64> = items
            .iter()
            .map(|i| i["message_server_id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids.len(), items.len());
        assert!(ids.iter().all(|&i| i >= FIRST_SERVER_ID));
        const { assert!(FIRST_SERVER_ID > 1 << 53) };
        // 150 messages at one millisecond
        let mut per_ms = std::collections::BTreeMap::<i64, usize>::new();
        for t in times {
            *per_ms.entry(t).or_default() += 1;
        }
        assert!(
            per_ms.values().any(|&n| n >= 140),
            "a run at one millisecond"
        );
    }
}

#[tokio::test]
async fn parameters_tokens_and_teams_are_checked() {
    let w = world();
    let conv = busiest(&w);
    let team_conv = w
        .conversations
        .keys()
        .find(|id| id.contains("|2|"))
        .unwrap()
        .clone();
    let team: String = team_conv.rsplit('|').next().unwrap().to_string();
    let h = H::start(w).await;
    let path = format!(
        "/im/v2.1/conversations/{}/messages",
        conv.replace('|', "%7C")
    );
    let q = |b: i64, e: i64, l: i64| {
        vec![
            ("begin_time", b.to_string()),
            ("end_time", e.to_string()),
            ("limit", l.to_string()),
        ]
    };
    for (b, e, l) in [(0, 10, 0), (0, 10, 101), (10, 10, 50), (11, 10, 50)] {
        assert_eq!(h.get(&path, &q(b, e, l)).await["code"], 414);
    }
    // a token only works for the query it came from
    let end = now_ms();
    let first = h.get(&path, &q(0, end, 10)).await;
    let token = first["data"]["next_token"].as_str().unwrap().to_string();
    let mut same = q(0, end, 10);
    same.push(("page_token", token.clone()));
    assert_eq!(h.get(&path, &same).await["code"], 200);
    let mut other = q(0, end - 1000, 10);
    other.push(("page_token", token.clone()));
    assert_eq!(h.get(&path, &other).await["code"], 414);
    // a non-member reading an advanced team with check_team_valid left true
    let outsider = format!("/im/v2.1/conversations/stranger%7C2%7C{team}/messages");
    assert_eq!(h.get(&outsider, &q(0, now_ms(), 10)).await["code"], 108403);
    let mut lenient = q(0, now_ms(), 10);
    lenient.push(("check_team_valid", "false".into()));
    assert_eq!(h.get(&outsider, &lenient).await["code"], 200);
    assert_eq!(
        h.get("/im/v2.1/conversations/x%7C2%7C42/messages", &q(0, 10, 10))
            .await["code"],
        108404
    );
}

#[tokio::test]
async fn conversations_lists_batches_and_last_message_shapes() {
    let h = H::start(world()).await;
    let list = h
        .get(
            "/im/v2.1/conversations",
            &[("account_id", "acc00".into()), ("limit", "2".into())],
        )
        .await;
    assert_eq!(list["code"], 200);
    assert_eq!(list["data"]["items"].as_array().unwrap().len(), 2);
    assert_eq!(list["data"]["has_more"], true);
    let id = list["data"]["items"][0]["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(list["data"]["items"][0]["last_message"]["message_server_id"].is_i64());
    // without cloud conversations
    let none = h
        .get(
            "/im/v2.1/conversations",
            &[("account_id", "nocloud00".into())],
        )
        .await;
    assert_eq!(none["code"], 403);
    // batch by id: v2.1 flat, v2 nested, unknown ids in failed_list
    let ids = format!("{id},nobody|1|x");
    let flat = h
        .get(
            "/im/v2.1/conversations/actions/conversation_ids",
            &[("conversation_ids", ids.clone())],
        )
        .await;
    assert_eq!(flat["data"]["success_list"].as_array().unwrap().len(), 1);
    assert_eq!(
        flat["data"]["failed_list"][0]["conversation_id"],
        "nobody|1|x"
    );
    let nested = h
        .get(
            "/im/v2/conversations/actions/conversation_ids",
            &[("conversation_ids", ids)],
        )
        .await;
    assert!(nested["data"]["success_list"][0]["last_message"]["message"]["message_type"].is_i64());
    // the documented update example changes server_extension and update_time
    let now = chrono::Utc::now().timestamp();
    let path = format!("/im/v2/conversations/{}", id.replace('|', "%7C"));
    let v: Value = h
        .signed(reqwest::Method::PATCH, &path, &h.secret, now)
        .json(&json!({"server_extension": "{\"k\":1}"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"]["server_extension"], "{\"k\":1}");
    assert_eq!(
        h.server.world().conversations[&id].server_extension,
        "{\"k\":1}"
    );
}

#[tokio::test]
async fn recalls_deletes_and_quick_comments() {
    let mut w = world();
    w.behaviour.short_pages = false;
    let conv = busiest(&w);
    let owner = conv.split('|').next().unwrap().to_string();
    let ids = w.visible_ids(&conv);
    let (a, b, c) = (ids[0], ids[1], *ids.last().unwrap());
    let sender_a = w.messages[w.by_id[&a]].sender.clone();
    w.recall_one_way(a);
    w.delete(b);
    w.recall_two_way(c, "acc00");
    assert!(w.add_comment(ids[2], "acc01", 4));
    let h = H::start(w).await;
    let (items, _) = h.read_all(&conv, "true").await;
    let has = |id: i64| items.iter().any(|i| i["message_server_id"] == id);
    assert!(
        has(a),
        "one-way recalls stay with include_no_sense_msg=true"
    );
    assert!(!has(b) && !has(c), "two-way recalls and deletes are gone");
    let path = format!(
        "/im/v2.1/conversations/{}/messages",
        conv.replace('|', "%7C")
    );
    let sense = h
        .get(
            &path,
            &[
                ("begin_time", "0".into()),
                ("end_time", now_ms().to_string()),
                ("limit", "100".into()),
                ("include_no_sense_msg", "false".into()),
            ],
        )
        .await;
    let listed = sense["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["message_server_id"] == a);
    assert_eq!(
        listed,
        sender_a == owner,
        "hidden from everyone but the sender"
    );
    // the recalled last message shows on the conversation
    let conv_v = h
        .get(
            "/im/v2.1/conversations/actions/conversation_ids",
            &[("conversation_ids", conv.clone())],
        )
        .await;
    let c0 = &conv_v["data"]["success_list"][0];
    assert_eq!(c0["message_state"], 1);
    assert_eq!(c0["revoke_notification"]["server_id"], c);
    assert!(c0.get("last_message").is_none());
    // quick comments: success for held messages, failed for removed ones
    let key = |i: &Value| {
        json!({"conversation_type": i["conversation_type"], "sender_id": i["sender_id"],
               "receiver_id": i["receiver_id"], "message_server_id": i["message_server_id"],
               "message_client_id": i["message_client_id"], "create_time": i["create_time"]})
    };
    let commented = items
        .iter()
        .find(|i| i["message_server_id"] == ids[2])
        .unwrap();
    let mut gone = key(commented);
    gone["message_server_id"] = json!(b);
    let now = chrono::Utc::now().timestamp();
    let v: Value = h
        .signed(reqwest::Method::POST, QUICK_COMMENT_PATH, &h.secret, now)
        .json(&json!({"messages": [key(commented), gone]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ok = &v["data"]["success_list"][0];
    assert!(ok["comments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["operator_id"] == "acc01" && c["index"] == 4));
    assert_eq!(v["data"]["failed_list"][0]["message_server_id"], b);
}

#[tokio::test]
async fn rate_limits_faults_and_deterministic_worlds() {
    let mut w = world();
    w.behaviour.rate_limit = Some(5);
    w.behaviour.rate_limit_block = Duration::from_millis(300);
    let h = H::start(w).await;
    let q = [("account_id", "acc00".to_string())];
    let mut codes = Vec::new();
    for _ in 0..7 {
        codes.push(
            h.get("/im/v2.1/conversations", &q).await["code"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(&codes[..5], &[200; 5]);
    assert_eq!(codes[5], 416);
    assert_eq!(codes[6], 416, "blocked for a while");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(h.get("/im/v2.1/conversations", &q).await["code"], 200);
    // queued faults
    h.server.world().behaviour.rate_limit = None;
    h.server.faults().code(None, 1, 503);
    assert_eq!(h.get("/im/v2.1/conversations", &q).await["code"], 503);
    h.server.faults().http(None, 1, 502);
    let r = h
        .signed(
            reqwest::Method::GET,
            "/im/v2.1/conversations",
            &h.secret,
            chrono::Utc::now().timestamp(),
        )
        .query(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(h.server.request_count_for("/im/v2.1/conversations") >= 10);
    assert_eq!(h.server.request_count_for(HISTORY_PATH), 0);
    // same spec, same world
    let fixed = spec();
    let (a, b) = (World::generate(&fixed), World::generate(&fixed));
    assert_eq!(a.truth(), b.truth());
    let mut c = a.clone();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    let done = c.random_activity(&mut rng, 200);
    assert!(done.len() > 150, "{}", done.len());
    assert_ne!(a.truth(), c.truth());
}
