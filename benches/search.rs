//! Search benchmark: N synthetic messages (default 1,000,000; about 60% Chinese, the
//! simulator's realistic chat lengths, 500 per conversation so ~2,000 conversations) go
//! through the store, then:
//!
//! 1. the indexer indexes them from the event log: documents/s, index size, peak RSS of the
//!    indexing (the process's high-water mark is reset just before it);
//! 2. index lag: with the daemon's follower running, a new page is committed and the time
//!    until its message is found is measured (5 times);
//! 3. 50 queries (25 Chinese words of 2–4 characters, 25 English words), p50/p99 latency of
//!    top-10 newest, unfiltered and filtered to one conversation, through
//!    `SearchIndex::search` (the library call the CLI and the API make);
//! 4. the baseline in the same run: the same rows in a flat PostgreSQL table with a
//!    pg_trgm GIN index, the same queries as `ILIKE '%word%' ORDER BY sent_at DESC LIMIT 10`;
//! 5. result sets: per query, the match count of the index against `ILIKE`, and the exact id
//!    sets within one conversation; mismatches are listed.
//!
//! Run: `cargo bench --bench search` (`CHATVAULT_BENCH_MESSAGES=100000` for a quick run).

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chatvault::index::{Indexer, SearchIndex, SearchRequest};
use chatvault::model::{
    Content, Cursor, MessageHeader, MessageKind, MessageObservation, Page, Platform, SourceName,
};
use chatvault::sim::text::Lang;
use chatvault::store::Store;
use chrono::DateTime;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::{env_usize, peak_rss_mb, PAGE, PER_CONVERSATION};

const CHINESE: [&str; 25] = [
    "会议",
    "周报",
    "合同",
    "机票",
    "快递",
    "房租",
    "发布",
    "讨论",
    "测试",
    "接口",
    "客户",
    "老板",
    "明天",
    "下午",
    "周末",
    "设计稿",
    "代码评审",
    "项目排期",
    "数据库",
    "服务器",
    "报销单",
    "新版本",
    "辛苦了",
    "没问题",
    "年会",
];
const ENGLISH: [&str; 25] = [
    "client",
    "team",
    "build",
    "manager",
    "everyone",
    "designer",
    "support",
    "pushed",
    "review",
    "fixed",
    "needs",
    "updating",
    "shipped",
    "reverted",
    "testing",
    "scheduled",
    "uploaded",
    "merged",
    "release",
    "hotfix",
    "budget",
    "slides",
    "migration",
    "dashboard",
    "logs",
];

/// The `i`-th page: like the store benchmark's, with 60% Chinese text.
fn page(i: usize, total: usize) -> Page {
    let mut rng = StdRng::seed_from_u64(1_000 + i as u64);
    let start = i * PAGE;
    let end = (start + PAGE).min(total);
    let mut p = Page::new(
        format!("bench/{i}"),
        None,
        Cursor(json!({"v": 1, "page": i})),
    );
    for n in start..end {
        p.messages.push(synthetic(&mut rng, n));
    }
    p
}

fn synthetic(rng: &mut StdRng, n: usize) -> MessageObservation {
    let conv = format!("c{:05}", n / PER_CONVERSATION);
    let seq = (n % PER_CONVERSATION) as i64 + 1;
    let id = (1u64 << 60) + n as u64;
    let lang = if rng.gen_bool(0.6) {
        Lang::Chinese
    } else {
        Lang::English
    };
    let text = chatvault::sim::text::message(rng, lang);
    let sender = format!("u{}", rng.gen_range(0..300));
    let sent_at = DateTime::from_timestamp(1_700_000_000 + n as i64 * 7, 0).unwrap();
    MessageObservation {
        conversation_id: conv,
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
        raw: json!({"payload": {"type": 1, "content": text}}),
    }
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn dir_size(path: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            total += dir_size(&p);
        } else {
            total += entry.metadata().map_or(0, |m| m.len());
        }
    }
    total
}

fn reset_peak_rss() {
    // Linux: writing 5 to clear_refs resets VmHWM to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let total = env_usize("CHATVAULT_BENCH_MESSAGES", 1_000_000);
    let rounds = env_usize("CHATVAULT_BENCH_ROUNDS", 3);
    let conversations = total.div_ceil(PER_CONVERSATION);
    let (options, _db) = chatvault::pg::testing::fresh_database().await;
    let store = Store::connect(options.clone(), 4).await?;
    store.migrate().await?;
    let source = SourceName::new("bench");
    store
        .register_source(&source, Platform::Tangsengdaodao)
        .await?;
    println!("search benchmark: {total} messages, {conversations} conversations, 60% Chinese");

    let t = Instant::now();
    for i in 0..total.div_ceil(PAGE) {
        store.apply_page(&source, &page(i, total)).await?;
    }
    println!(
        "archive written through the store in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // 0. The analysers on a sample: speed, and what jieba alone would find.
    let sample: Vec<String> = (0..total.min(50_000).div_ceil(PAGE))
        .flat_map(|i| page(i, total).messages)
        .filter_map(|m| m.content.map(|c| c.text))
        .collect();
    let bytes: usize = sample.iter().map(String::len).sum();
    let t = Instant::now();
    let gram_tokens: usize = sample
        .iter()
        .map(|s| chatvault::index::tokenizer::grams(s).len())
        .sum();
    let grams_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let segmented: Vec<Vec<String>> = sample
        .iter()
        .map(|s| chatvault::index::tokenizer::words(s))
        .collect();
    let jieba_secs = t.elapsed().as_secs_f64();
    let jieba_tokens: usize = segmented.iter().map(Vec::len).sum();
    println!(
        "analysers on {} messages ({:.1} MB): n-grams {:.1} MB/s ({gram_tokens} tokens), jieba {:.1} MB/s ({jieba_tokens} tokens)",
        sample.len(),
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / grams_secs,
        bytes as f64 / 1e6 / jieba_secs,
    );
    let (mut contained, mut as_word) = (0usize, 0usize);
    let mut worst = (String::new(), 1.0f64);
    for word in CHINESE {
        let with: Vec<usize> = (0..sample.len())
            .filter(|&i| sample[i].contains(word))
            .collect();
        let found = with
            .iter()
            .filter(|&&i| segmented[i].iter().any(|t| t == word))
            .count();
        contained += with.len();
        as_word += found;
        let recall = found as f64 / with.len().max(1) as f64;
        if recall < worst.1 {
            worst = (word.to_string(), recall);
        }
    }
    println!(
        "jieba alone (a query word must be one of the text's jieba tokens) finds {as_word} of the {contained} messages containing the 25 Chinese words ({:.1}%; worst {} at {:.0}%); the n-gram field finds all of them",
        100.0 * as_word as f64 / contained.max(1) as f64,
        worst.0,
        worst.1 * 100.0
    );
    drop(segmented);
    drop(sample);

    // 1. Index everything from the event log.
    let dir = tempfile::tempdir()?;
    let index = SearchIndex::open_or_create(dir.path())?;
    reset_peak_rss();
    let rss_before = support::rss_mb();
    let t = Instant::now();
    let report = Indexer::new(index.clone()).catch_up(&store).await?;
    let index_secs = t.elapsed().as_secs_f64();
    let peak = peak_rss_mb();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    println!(
        "after indexing: RssAnon {}, RssFile {} (memory-mapped index files count in RSS)",
        field("RssAnon:"),
        field("RssFile:")
    );
    assert_eq!(report.documents as usize, total);
    let size = dir_size(dir.path());
    println!(
        "indexing: {:.0} documents/s ({index_secs:.1}s), index {:.1} MB ({:.0} bytes/message), peak RSS {peak:.0} MB (RSS before {rss_before:.0} MB)",
        total as f64 / index_secs,
        size as f64 / 1e6,
        size as f64 / total as f64,
    );

    // 2. Index lag with the daemon's follower.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let follower = tokio::spawn(Indexer::new(index.clone()).follow(
        store.clone(),
        chatvault::commands::run::INDEX_INTERVAL,
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut lags = Vec::new();
    for k in 0..5 {
        let n = total + k;
        let mut rng = StdRng::seed_from_u64(n as u64);
        let mut m = synthetic(&mut rng, n);
        let marker = format!("lagprobe{k}");
        if let Some(c) = m.content.as_mut() {
            c.text = format!("{} {marker}", c.text);
        }
        let mut p = Page::new(format!("lag/{k}"), None, Cursor(json!({"v": 1, "k": k})));
        p.messages.push(m);
        store.apply_page(&source, &p).await?;
        let committed = Instant::now();
        let request = SearchRequest {
            query: marker.clone(),
            limit: 1,
            ..Default::default()
        };
        loop {
            if !index.search(&request)?.hits.is_empty() {
                break;
            }
            if committed.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("message {marker} not indexed after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lags.push(committed.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(137)).await;
    }
    let _ = stop_tx.send(true);
    follower.await?;
    let max_lag = lags.iter().cloned().fold(0.0, f64::max);
    let mut lag_sorted = lags.clone();
    println!(
        "index lag after a page commits: median {:.0} ms, max {max_lag:.0} ms (follower polls every {} ms)",
        percentile(&mut lag_sorted, 0.5),
        chatvault::commands::run::INDEX_INTERVAL.as_millis()
    );

    // 3. The queries on the index.
    let words: Vec<&str> = CHINESE.iter().chain(ENGLISH.iter()).copied().collect();
    let conversation_of = |i: usize| format!("c{:05}", (i * 37) % conversations);
    let mut newest = Vec::new();
    let mut filtered = Vec::new();
    for _ in 0..rounds {
        for (i, word) in words.iter().enumerate() {
            let r = SearchRequest {
                query: word.to_string(),
                limit: 10,
                ..Default::default()
            };
            let t = Instant::now();
            let page = index.search(&r)?;
            newest.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(!page.hits.is_empty(), "{word} finds nothing");
            let r = SearchRequest {
                conversation: Some(conversation_of(i)),
                ..r
            };
            let t = Instant::now();
            index.search(&r)?;
            filtered.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }

    // 4. The baseline: the same rows, pg_trgm GIN, ILIKE.
    let pool = store.pool();
    let t = Instant::now();
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        .execute(pool)
        .await?;
    sqlx::query(
        "CREATE TABLE bench_text AS SELECT conversation_id, message_id, sent_at, text FROM archive.messages",
    )
    .execute(pool)
    .await?;
    sqlx::query("CREATE INDEX bench_text_trgm ON bench_text USING gin (text gin_trgm_ops)")
        .execute(pool)
        .await?;
    sqlx::query("CREATE INDEX bench_text_time ON bench_text (conversation_id, sent_at)")
        .execute(pool)
        .await?;
    sqlx::query("ANALYZE bench_text").execute(pool).await?;
    println!(
        "baseline table with pg_trgm GIN index built in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let mut pg_newest = Vec::new();
    let mut pg_filtered = Vec::new();
    for _ in 0..rounds {
        for (i, word) in words.iter().enumerate() {
            let pattern = format!("%{word}%");
            let t = Instant::now();
            let rows: Vec<(String,)> = sqlx::query_as(
                "SELECT message_id FROM bench_text WHERE text ILIKE $1 ORDER BY sent_at DESC LIMIT 10",
            )
            .bind(&pattern)
            .fetch_all(pool)
            .await?;
            pg_newest.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(!rows.is_empty());
            let t = Instant::now();
            let _: Vec<(String,)> = sqlx::query_as(
                "SELECT message_id FROM bench_text WHERE conversation_id = $2 AND text ILIKE $1 ORDER BY sent_at DESC LIMIT 10",
            )
            .bind(&pattern)
            .bind(conversation_of(i))
            .fetch_all(pool)
            .await?;
            pg_filtered.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let (n50, n99) = (percentile(&mut newest, 0.5), percentile(&mut newest, 0.99));
    let (f50, f99) = (
        percentile(&mut filtered, 0.5),
        percentile(&mut filtered, 0.99),
    );
    let (p50, p99) = (
        percentile(&mut pg_newest, 0.5),
        percentile(&mut pg_newest, 0.99),
    );
    let (pf50, pf99) = (
        percentile(&mut pg_filtered, 0.5),
        percentile(&mut pg_filtered, 0.99),
    );
    println!(
        "top-10 newest, {} queries x {rounds}:  index p50 {n50:.2} ms  p99 {n99:.2} ms  |  pg_trgm ILIKE p50 {p50:.1} ms  p99 {p99:.1} ms  |  {:.0}x faster at p50, {:.0}x at p99",
        words.len(),
        p50 / n50,
        p99 / n99
    );
    println!(
        "one conversation:                index p50 {f50:.2} ms  p99 {f99:.2} ms  |  pg_trgm ILIKE p50 {pf50:.1} ms  p99 {pf99:.1} ms  |  {:.0}x faster at p50, {:.0}x at p99",
        pf50 / f50,
        pf99 / f99
    );

    // 5. Result sets against ILIKE.
    let mut mismatches = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let pattern = format!("%{word}%");
        let (pg_count,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM bench_text WHERE text ILIKE $1")
                .bind(&pattern)
                .fetch_one(pool)
                .await?;
        let page = index.search(&SearchRequest {
            query: word.to_string(),
            limit: 1,
            ..Default::default()
        })?;
        // the 5 lag probes are in the index and in PostgreSQL's table alike
        let conversation = conversation_of(i);
        let pg_ids: BTreeSet<String> = sqlx::query_scalar(
            "SELECT message_id FROM bench_text WHERE conversation_id = $2 AND text ILIKE $1",
        )
        .bind(&pattern)
        .bind(&conversation)
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
        let ids: BTreeSet<String> = index
            .search(&SearchRequest {
                query: word.to_string(),
                conversation: Some(conversation.clone()),
                limit: 1000,
                ..Default::default()
            })?
            .hits
            .into_iter()
            .map(|h| h.message_id)
            .collect();
        if page.total as i64 != pg_count || ids != pg_ids {
            let example = pg_ids
                .symmetric_difference(&ids)
                .next()
                .cloned()
                .unwrap_or_default();
            let example_text: Option<String> =
                sqlx::query_scalar("SELECT text FROM bench_text WHERE message_id = $1")
                    .bind(&example)
                    .fetch_optional(pool)
                    .await?;
            mismatches.push(format!(
                "{word}: index {} vs ILIKE {pg_count} matches; in {conversation} {} vs {} (e.g. {:?})",
                page.total,
                ids.len(),
                pg_ids.len(),
                example_text.unwrap_or_default()
            ));
        }
    }
    println!(
        "result sets: {} of {} single-word queries give exactly ILIKE's matches",
        words.len() - mismatches.len(),
        words.len()
    );
    for m in &mismatches {
        println!("  mismatch {m}");
    }
    println!("peak RSS of the whole process: {:.0} MB", peak_rss_mb());
    Ok(())
}
