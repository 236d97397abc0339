//! Store ingest benchmark: N synthetic messages (default 1,000,000) in ~2,000 conversations,
//! through `Store::apply_page` in pages of 1,000; then a no-change replay of the same pages;
//! then, as the baseline, `COPY` of the same rows into a bare table with the same primary key.
//!
//! Run: `cargo bench --bench store_ingest` (`CHATVAULT_BENCH_MESSAGES=200000` for a quick run).
//! Prints rates, the ratios and this process's peak RSS.

use std::time::Instant;

use chatvault::model::{
    Content, Cursor, MessageHeader, MessageKind, MessageObservation, Page, Platform, SourceName,
};
use chatvault::sim::text::Lang;
use chatvault::store::Store;
use chrono::DateTime;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::Connection;

const PAGE: usize = 1000;
const PER_CONVERSATION: usize = 500;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The `i`-th page of the synthetic archive, the same every time it is asked for.
fn page(i: usize, total: usize) -> Page {
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

fn csv_field(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let total = env_usize("CHATVAULT_BENCH_MESSAGES", 1_000_000);
    let pages = total.div_ceil(PAGE);
    let (options, _db) = chatvault::pg::testing::fresh_database().await;
    let store = Store::connect(options.clone(), 4).await?;
    store.migrate().await?;
    let source = SourceName::new("bench");
    store
        .register_source(&source, Platform::Tangsengdaodao)
        .await?;
    println!(
        "store ingest benchmark: {total} messages, {} conversations, pages of {PAGE}",
        total.div_ceil(PER_CONVERSATION)
    );

    // 1. First ingest through the store.
    let t = Instant::now();
    for i in 0..pages {
        let out = store.apply_page(&source, &page(i, total)).await?;
        assert_eq!(out.messages_new as usize, page(i, total).messages.len());
    }
    let ingest = t.elapsed().as_secs_f64();

    // 2. A no-change replay of the same pages.
    let t = Instant::now();
    for i in 0..pages {
        let mut p = page(i, total);
        p.expected_cursor = Some(p.next_cursor.clone());
        let out = store.apply_page(&source, &p).await?;
        assert_eq!(out.events, 0);
    }
    let replay = t.elapsed().as_secs_f64();

    // 3. Baseline: COPY the same rows into a bare table with the same primary key.
    let mut conn = sqlx::PgConnection::connect_with(&options).await?;
    sqlx::query(
        "CREATE TABLE bench_copy (source text, conversation_id text, message_id text, seq bigint,
             sender_id text, sender_name text, sent_at timestamptz, kind text, text text,
             content jsonb, raw jsonb, PRIMARY KEY (source, conversation_id, message_id))",
    )
    .execute(&mut conn)
    .await?;
    let t = Instant::now();
    for i in 0..pages {
        let p = page(i, total);
        let mut data = String::with_capacity(PAGE * 600);
        for m in &p.messages {
            let h = m.header.as_ref().unwrap();
            let c = m.content.as_ref().unwrap();
            for (k, f) in [
                "bench",
                &m.conversation_id,
                &m.message_id,
                &h.seq.unwrap().to_string(),
                h.sender_id.as_deref().unwrap(),
                h.sender_name.as_deref().unwrap(),
                &h.sent_at.to_rfc3339(),
                c.kind.as_str(),
                &c.text,
                &c.content.to_string(),
                &m.raw.to_string(),
            ]
            .iter()
            .enumerate()
            {
                if k > 0 {
                    data.push(',');
                }
                csv_field(&mut data, f);
            }
            data.push('\n');
        }
        let mut copy = conn
            .copy_in_raw("COPY bench_copy FROM STDIN (FORMAT csv)")
            .await?;
        copy.send(data.as_bytes()).await?;
        copy.finish().await?;
    }
    let copy = t.elapsed().as_secs_f64();

    let rate = |secs: f64| total as f64 / secs;
    println!(
        "store ingest (new):      {:>10.0} messages/s  ({ingest:.1} s)",
        rate(ingest)
    );
    println!(
        "store replay (no change): {:>9.0} messages/s  ({replay:.1} s)",
        rate(replay)
    );
    println!(
        "raw COPY baseline:       {:>10.0} messages/s  ({copy:.1} s)",
        rate(copy)
    );
    println!(
        "ratio store/COPY: {:.2} (target >= 0.33); replay speed-up: {:.2}x (target >= 3)",
        copy / ingest,
        ingest / replay
    );
    println!(
        "peak RSS of this process: {:.0} MB (target < 300)",
        peak_rss_mb()
    );
    Ok(())
}
