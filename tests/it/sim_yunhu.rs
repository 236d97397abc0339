//! The fake Yunhu server on its own: protobuf decoding (bytes built from the community's
//! example values, unknown fields), and the quirks `docs/upstreams/yunhu.md` writes down,
//! over real HTTP.

use chatvault::connector::yunhu::pb;
use chatvault::sim::yunhu::{
    Activity, Malformed, SimServer, World, WorldSpec, BY_SEQ_WINDOW, MAX_PAGE,
};
use prost::Message;
use rand::SeedableRng;
use serde_json::{json, Value};

/// Built by hand from the community's example values (conversation timestamps, a captured
/// message id): a conversation
/// list with one group entry, the undocumented field 10 and an unknown field 99.
const CONVERSATION_LIST_HEX: &str = "0a0b10011a077375636365737312350a0933303731343932343510022206e4bda0e5a5bd28e7d2bcff8b33500160baa58fc5067a09e6b58be8af95e7bea49a0603616263180122203031323334353637383961626364656630313233343536373839616263646566";

/// A message list with one bot message (a captured id and send time), carrying the
/// undocumented field 11 and an unknown field 50, and no `edit_time`/`recall_time`.
const MESSAGE_LIST_HEX: &str = "0a0b10011a077375636365737312600a20353738313537393464656562343136363935386439373734343031623437663012170a08383632393736353710031a09e5b08fe58aa9e6898b1a046c65667420012a090a026869aa0202414930cfa7a486a333502a580760009203027a7a1801";

#[test]
fn example_bytes_decode_with_unknown_fields_skipped() {
    let bytes = hex::decode(CONVERSATION_LIST_HEX).unwrap();
    let list = pb::ConversationListResponse::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(list.status.as_ref().map(|s| s.code), Some(1));
    assert_eq!(list.total, 1);
    assert_eq!(list.md5, "0123456789abcdef0123456789abcdef");
    let d = &list.data[0];
    assert_eq!(d.chat_id, "307149245");
    assert_eq!(d.chat_type, 2);
    assert_eq!(d.chat_content, "你好");
    assert_eq!(d.timestamp_ms, 1_755_566_778_727);
    assert_eq!(d.send_timestamp, 1_755_566_778);
    assert_eq!(d.name, "测试群");
    assert_eq!(d.remark, "", "a missing field is its default");

    let bytes = hex::decode(MESSAGE_LIST_HEX).unwrap();
    let list = pb::lenient_list(&bytes).expect("frames");
    assert_eq!(list.status.as_ref().map(|s| s.code), Some(1));
    assert_eq!(list.records.len(), 1);
    let msg = list.records[0].1.as_ref().expect("the record decodes");
    assert_eq!(msg.msg_id, "57815794deeb4166958d9774401b47f0");
    assert_eq!(msg.send_time, 1_761_755_075_535);
    assert_eq!(msg.msg_seq, 42);
    assert_eq!(msg.edit_time, 0);
    assert_eq!(msg.recall_time, 0);
    let sender = msg.sender.as_ref().unwrap();
    assert_eq!(
        (
            sender.chat_id.as_str(),
            sender.chat_type,
            sender.name.as_str()
        ),
        ("86297657", 3, "小助手")
    );
    let content = msg.content.as_ref().unwrap();
    assert_eq!((content.text.as_str(), content.tip.as_str()), ("hi", "AI"));
    // the whole response decodes with prost too
    let whole = pb::ListMsgResponse::decode(bytes.as_slice()).unwrap();
    assert_eq!(whole.data[0].msg_id, msg.msg_id);
}

#[test]
fn broken_framing_is_an_error_not_a_panic() {
    let bytes = hex::decode(MESSAGE_LIST_HEX).unwrap();
    for cut in [1, 5, 20, bytes.len() - 1] {
        assert!(pb::lenient_list(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    assert!(pb::lenient_list(b"\x0f\xff").is_err());
    assert!(pb::lenient_list(b"").unwrap().records.is_empty());
}

fn small() -> WorldSpec {
    WorldSpec {
        seed: 3,
        users: 6,
        groups: 2,
        bots: 1,
        direct_chats: 3,
        messages: 400,
        ..WorldSpec::default()
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(server: &SimServer, token: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: server.base_url(),
            token: token.to_string(),
        }
    }

    async fn raw(&self, path: &str, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("token", &self.token)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn list(&self, path: &str, request: impl Message) -> pb::ListMsgResponse {
        let bytes = self
            .raw(path, request.encode_to_vec())
            .await
            .bytes()
            .await
            .unwrap();
        pb::ListMsgResponse::decode(bytes).expect("protobuf")
    }
}

fn busiest(world: &World) -> (String, i64) {
    let c = world.chats.iter().max_by_key(|c| c.messages.len()).unwrap();
    (c.chat_id.clone(), c.chat_type)
}

#[tokio::test]
async fn list_message_is_newest_first_at_most_thirty_and_strictly_before_the_anchor() {
    let server = SimServer::start(World::generate(&small())).await;
    let client = Client::new(&server, &small().token);
    let (chat_id, chat_type) = busiest(&server.world());
    let ask = |msg_id: &str| pb::ListMsgRequest {
        msg_count: 100,
        msg_id: msg_id.to_string(),
        chat_type,
        chat_id: chat_id.clone(),
    };
    let page = client.list("/v1/msg/list-message", ask("")).await;
    assert_eq!(page.data.len(), MAX_PAGE);
    let seqs: Vec<i64> = page.data.iter().map(|m| m.msg_seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    let anchor = page.data.last().unwrap();
    let next = client
        .list("/v1/msg/list-message", ask(&anchor.msg_id))
        .await;
    assert!(
        next.data.iter().all(|m| m.msg_seq < anchor.msg_seq),
        "anchor excluded"
    );
    assert!(!next.data.iter().any(|m| m.msg_id == anchor.msg_id));
    server.shutdown().await;
}

#[tokio::test]
async fn list_message_by_seq_answers_only_within_its_window() {
    let server = SimServer::start(World::generate(&small())).await;
    let client = Client::new(&server, &small().token);
    let (chat_id, chat_type) = busiest(&server.world());
    let newest = server.world().chat(&chat_id).unwrap().last_seq();
    let ask = |start: i64| pb::ListMsgBySeqRequest {
        msg_start: start,
        chat_type,
        chat_id: chat_id.clone(),
    };
    let near = client
        .list("/v1/msg/list-message-by-seq", ask(newest - 5))
        .await;
    let mut seqs: Vec<i64> = near.data.iter().map(|m| m.msg_seq).collect();
    seqs.sort();
    assert!(
        seqs.iter().all(|s| *s > newest - 5),
        "the start is not included: {seqs:?}"
    );
    assert_eq!(seqs.last(), Some(&newest));
    let far = client
        .list("/v1/msg/list-message-by-seq", ask(newest - 80))
        .await;
    let lowest = far.data.iter().map(|m| m.msg_seq).min().unwrap();
    assert!(
        lowest > newest - 80 + 1,
        "too far behind: only the newest come back"
    );
    assert!(far.data.len() as i64 <= BY_SEQ_WINDOW);
    server.shutdown().await;
}

#[tokio::test]
async fn the_conversation_list_is_empty_when_the_md5_is_current() {
    let server = SimServer::start(World::generate(&small())).await;
    let client = Client::new(&server, &small().token);
    let ask = |md5: &str| {
        pb::ConversationListRequest {
            md5: md5.to_string(),
        }
        .encode_to_vec()
    };
    let body = client
        .raw("/v1/conversation/list", ask(""))
        .await
        .bytes()
        .await
        .unwrap();
    let full = pb::ConversationListResponse::decode(body).unwrap();
    assert!(!full.data.is_empty());
    assert_eq!(full.md5.len(), 32);
    let body = client
        .raw("/v1/conversation/list", ask(&full.md5))
        .await
        .bytes()
        .await
        .unwrap();
    let same = pb::ConversationListResponse::decode(body).unwrap();
    assert!(same.data.is_empty());
    assert_eq!(same.md5, full.md5);
    {
        let mut w = server.world();
        let chat = full.data[0].chat_id.clone();
        let me = w.me.id.clone();
        w.post_text(&chat, &me, "news").unwrap();
    }
    let body = client
        .raw("/v1/conversation/list", ask(&full.md5))
        .await
        .bytes()
        .await
        .unwrap();
    let changed = pb::ConversationListResponse::decode(body).unwrap();
    assert_eq!(changed.data.len(), full.data.len());
    assert_ne!(changed.md5, full.md5);
    assert!(changed.data.iter().any(|d| d.chat_content == "news"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_bad_token_gets_the_json_error_even_on_protobuf_endpoints() {
    let server = SimServer::start(World::generate(&small())).await;
    for token in ["", "nope"] {
        let client = Client::new(&server, token);
        let response = client.raw("/v1/msg/list-message", Vec::new()).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({"code": -101, "msg": "未登录"}));
    }
    // the wrong method is a 404
    let response = reqwest::get(format!("{}/v1/conversation/list", server.base_url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    server.shutdown().await;
}

#[tokio::test]
async fn edit_records_carry_content_old_as_a_json_string_and_recalls_keep_or_blank() {
    for blank in [false, true] {
        let spec = WorldSpec {
            recall_blanks_content: blank,
            ..small()
        };
        let server = SimServer::start(World::generate(&spec)).await;
        let client = Client::new(&server, &spec.token);
        let (chat_id, chat_type, msg_id, recalled) = {
            let mut w = server.world();
            let (chat_id, chat_type) = busiest(&w);
            let me = w.me.id.clone();
            let msg_id = w.post_text(&chat_id, &me, "one").unwrap();
            assert!(w.edit_text(&msg_id, "two"));
            assert!(w.edit_text(&msg_id, "three"));
            let recalled = w.post_text(&chat_id, &me, "secret").unwrap();
            assert!(w.recall(&recalled));
            (chat_id, chat_type, msg_id, recalled)
        };
        let body = json!({"msgId": msg_id, "size": 1, "page": 2});
        let response = client
            .raw(
                "/v1/msg/list-message-edit-record",
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
        let value: Value = response.json().await.unwrap();
        assert_eq!(value["code"], 1);
        assert_eq!(value["data"]["total"], 2);
        let row = &value["data"]["list"][0];
        let old: Value =
            serde_json::from_str(row["contentOld"].as_str().expect("a JSON string")).unwrap();
        assert_eq!(
            old,
            json!({"text": "one"}),
            "page 2 of size 1, newest first"
        );
        assert!(row["msgTime"].as_u64().unwrap() > row["createTime"].as_u64().unwrap());

        let page = client
            .list(
                "/v1/msg/list-message",
                pb::ListMsgRequest {
                    msg_count: 5,
                    msg_id: String::new(),
                    chat_type,
                    chat_id: chat_id.clone(),
                },
            )
            .await;
        let r = page.data.iter().find(|m| m.msg_id == recalled).unwrap();
        assert!(r.recall_time > 0);
        let text = r.content.as_ref().map(|c| c.text.as_str()).unwrap_or("");
        assert_eq!(text, if blank { "" } else { "secret" });
        let e = page.data.iter().find(|m| m.msg_id == msg_id).unwrap();
        assert!(e.edit_time > 0);
        assert_eq!(e.content.as_ref().unwrap().text, "three");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn faults_play_back_rate_limits_and_broken_records() {
    let server = SimServer::start(World::generate(&small())).await;
    let client = Client::new(&server, &small().token);
    let (chat_id, chat_type) = busiest(&server.world());
    let ask = || pb::ListMsgRequest {
        msg_count: 30,
        msg_id: String::new(),
        chat_type,
        chat_id: chat_id.clone(),
    };
    server
        .faults()
        .rate_limit(Some("/v1/msg/list-message"), 1, 3);
    let response = client
        .raw("/v1/msg/list-message", ask().encode_to_vec())
        .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    server.faults().malformed(1, Malformed::WrongWireType);
    let bytes = client
        .raw("/v1/msg/list-message", ask().encode_to_vec())
        .await
        .bytes()
        .await
        .unwrap();
    let list = pb::lenient_list(&bytes).unwrap();
    let broken = list.records.iter().filter(|(_, r)| r.is_err()).count();
    assert_eq!(broken, 1);
    assert_eq!(list.records.len(), 30);
    assert!(
        pb::ListMsgResponse::decode(bytes.as_ref()).is_err(),
        "the whole page would be lost"
    );
    assert_eq!(server.request_count_for("/v1/msg/list-message"), 2);
    server.shutdown().await;
}

#[test]
fn worlds_are_deterministic_and_activity_mixes_posts_edits_and_recalls() {
    let a = World::generate(&small());
    let b = World::generate(&small());
    let ids = |w: &World| {
        w.truth()
            .iter()
            .flat_map(|c| c.messages.iter().map(|m| m.msg_id.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(a.message_count(), 400);
    let mut w = a;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let done = w.random_activity(&mut rng, 300);
    assert!(done.iter().any(|a| matches!(a, Activity::Posted { .. })));
    assert!(done.iter().any(|a| matches!(a, Activity::Edited(_))));
    assert!(done.iter().any(|a| matches!(a, Activity::Recalled(_))));
    let posted = done
        .iter()
        .filter(|a| matches!(a, Activity::Posted { .. }))
        .count();
    assert_eq!(w.message_count(), 400 + posted);
    let big = World::generate(&WorldSpec {
        messages: 20_000,
        ..small()
    });
    assert_eq!(big.message_count(), 20_000);
}
