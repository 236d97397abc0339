//! The chain heads as stored (`chatvault verify --print-heads`, and the line kept elsewhere
//! after each run): each source's last `event_seq` and its hash.

use serde::Serialize;

use super::{Result, Store};

/// One source's chain head, printed as `SOURCE=SEQ:HASH` (what `verify --head` reads).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainHead {
    pub source: String,
    pub event_seq: i64,
    /// Lowercase hex of the 32-byte hash.
    pub hash: String,
}

impl std::fmt::Display for ChainHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}:{}", self.source, self.event_seq, self.hash)
    }
}

impl Store {
    /// Every registered source's stored chain head, by source name.
    pub async fn stored_heads(&self) -> Result<Vec<ChainHead>> {
        let rows: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT s.source, COALESCE(h.event_seq, 0), COALESCE(h.hash, '\\x'::bytea)
             FROM vault.sources s LEFT JOIN vault.chain_heads h USING (source)
             ORDER BY s.source",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(source, event_seq, hash)| ChainHead {
                source,
                event_seq,
                hash: hex::encode(hash),
            })
            .collect())
    }
}
