//! Store ingest benchmark: N synthetic messages (default 1,000,000) in ~2,000 conversations,
//! through `Store::apply_page` in pages of 1,000; then a no-change replay of the same pages;
//! then, as the baseline, `COPY` of the same rows into a bare table with the same primary key.
//!
//! Only the time spent in the store (and, for the baseline, in building the CSV and the
//! `COPY`) is counted; generating the synthetic pages is not.
//!
//! Run: `cargo bench --bench store_ingest` (`CHATVAULT_BENCH_MESSAGES=200000` for a quick run).
//! Prints rates, the ratios and this process's peak RSS.

mod support;

use std::time::Instant;

use chatvault::model::{Platform, SourceName};
use chatvault::store::Store;
use sqlx::Connection;
use support::{env_usize, page, peak_rss_mb, PAGE, PER_CONVERSATION};

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
    let ingest = support::ingest(&store, &source, total).await?;

    // 2. A no-change replay of the same pages.
    let mut spent = std::time::Duration::ZERO;
    for i in 0..pages {
        let mut p = page(i, total);
        p.expected_cursor = Some(p.next_cursor.clone());
        let t = Instant::now();
        let out = store.apply_page(&source, &p).await?;
        spent += t.elapsed();
        assert_eq!(out.events, 0);
    }
    let replay = spent.as_secs_f64();

    // 3. Baseline: COPY the same rows into a bare table with the same primary key.
    let mut conn = sqlx::PgConnection::connect_with(&options).await?;
    sqlx::query(
        "CREATE TABLE bench_copy (source text, conversation_id text, message_id text, seq bigint,
             sender_id text, sender_name text, sent_at timestamptz, kind text, text text,
             content jsonb, raw jsonb, PRIMARY KEY (source, conversation_id, message_id))",
    )
    .execute(&mut conn)
    .await?;
    let mut spent = std::time::Duration::ZERO;
    for i in 0..pages {
        let p = page(i, total);
        let t = Instant::now();
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
        spent += t.elapsed();
    }
    let copy = spent.as_secs_f64();

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
