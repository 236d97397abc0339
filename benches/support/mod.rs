//! Shared by the benchmarks: a deterministic synthetic archive and peak-RSS reading.
#![allow(dead_code)]

use chatvault::model::{Content, Cursor, MessageHeader, MessageKind, MessageObservation, Page};
use chatvault::sim::text::Lang;
use chrono::DateTime;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

pub const PAGE: usize = 1000;
pub const PER_CONVERSATION: usize = 500;

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A memory figure from /proc/self/status (`VmHWM`, `VmRSS`), in MB.
fn proc_status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Peak resident memory of this process, in MB.
pub fn peak_rss_mb() -> f64 {
    proc_status_mb("VmHWM:")
}

/// Resident memory now, in MB.
pub fn rss_mb() -> f64 {
    proc_status_mb("VmRSS:")
}

/// The `i`-th page of the synthetic archive, the same every time it is asked for.
pub fn page(i: usize, total: usize) -> Page {
    let mut rng = StdRng::seed_from_u64(i as u64);
    let start = i * PAGE;
    let end = (start + PAGE).min(total);
    let mut p = Page::new(
        format!("bench/{i}"),
        None,
        Cursor(json!({"v": 1, "page": i})),
    );
    for n in start..end {
        let conv = format!("c{:05}", n / PER_CONVERSATION);
        let seq = (n % PER_CONVERSATION) as i64 + 1;
        let id = (1u64 << 60) + n as u64;
        let lang = if rng.gen_bool(0.7) {
            Lang::Chinese
        } else {
            Lang::English
        };
        let text = chatvault::sim::text::message(&mut rng, lang);
        let sender = format!("u{}", rng.gen_range(0..300));
        let sent_at = DateTime::from_timestamp(1_700_000_000 + n as i64 * 7, 0).unwrap();
        p.messages.push(MessageObservation {
            conversation_id: conv.clone(),
            message_id: id.to_string(),
            header: Some(MessageHeader {
                seq: Some(seq),
                sender_id: Some(sender.clone()),
                sender_name: Some(format!("用户{sender}")),
                sent_at,
                reply_to: None,
            }),
            content: Some(Content {
                kind: MessageKind::Text,
                text: text.clone(),
                content: json!({}),
            }),
            edited_at: None,
            earlier_versions: vec![],
            recalled: None,
            deleted: None,
            reactions: None,
            raw: json!({
                "message_id": id, "message_idstr": id.to_string(), "message_seq": seq,
                "client_msg_no": format!("{:032x}", rng.gen::<u128>()),
                "from_uid": sender, "channel_id": conv, "channel_type": 2,
                "timestamp": sent_at.timestamp(), "setting": 0, "is_deleted": 0,
                "header": {"no_persist": 0, "red_dot": 1, "sync_once": 0},
                "payload": {"type": 1, "content": text}, "signal_payload": "",
            }),
        });
    }
    p
}

/// Push every synthetic page of a `total`-message archive through the store; seconds spent
/// in the store (generating the pages is not counted).
pub async fn ingest(
    store: &chatvault::store::Store,
    source: &chatvault::model::SourceName,
    total: usize,
) -> anyhow::Result<f64> {
    let mut spent = std::time::Duration::ZERO;
    for i in 0..total.div_ceil(PAGE) {
        let p = page(i, total);
        let t = std::time::Instant::now();
        let out = store.apply_page(source, &p).await?;
        spent += t.elapsed();
        assert_eq!(out.messages_new as usize, p.messages.len());
    }
    Ok(spent.as_secs_f64())
}
