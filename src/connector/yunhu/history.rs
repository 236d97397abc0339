//! Reading one chat's history: passes from the newest message down over the rescan window,
//! the contiguous `list-message-by-seq` catch-up, back-fill below the oldest archived
//! message, and the edit records of edited messages (see the parent module's doc for the
//! cursor and when each is used). Gaps are reported where upstream skips seqs.

use super::*;

impl YunhuConnector {
    fn window_disabled(&self) -> bool {
        self.rescan_messages == 0 && self.rescan_days == 0
    }

    pub(super) fn decode_error(
        &self,
        path: &str,
        chat: Option<&str>,
        why: String,
        body: &[u8],
    ) -> ConnectorError {
        ConnectorError::Decode {
            message: format!("{}: {why}", self.api.what(path, chat)),
            raw: Some(api::raw_body(body)),
        }
    }

    /// One `list-message` page (decoded record by record) for `chat`.
    async fn list_page(
        &self,
        chat: &Chat,
        conversation_id: &str,
        path: &'static str,
        request: Vec<u8>,
    ) -> Result<PageRecords, ConnectorError> {
        let what = self.api.what(path, Some(&chat.id));
        let body = self
            .api
            .post_proto(path, Some(&chat.id), &self.token, &RawRequest(request))
            .await?;
        let list = pb::lenient_list(&body)
            .map_err(|e| self.decode_error(path, Some(&chat.id), e.to_string(), &body))?;
        api::check_status(&what, list.status.as_ref())?;
        let mut out = PageRecords::default();
        for (bytes, decoded) in list.records {
            let mapped = decoded
                .map_err(|e| format!("protobuf record does not decode: {e}"))
                .and_then(|msg| map::message(conversation_id, &msg, bytes));
            match mapped {
                Ok(m) => out.messages.push(m),
                Err(reason) => out.quarantine.push(QuarantineRecord {
                    reason: format!("yunhu chat {}: {reason}", chat.id),
                    raw: api::raw_body(bytes),
                }),
            }
        }
        if out.messages.is_empty() && !out.quarantine.is_empty() {
            // Nothing to page on: the next anchor would be unknown. Keep the records and
            // give up on this chat for this run rather than take the page for the end.
            return Err(ConnectorError::Decode {
                message: format!("{what}: no record of the page could be read"),
                raw: Some(Value::Array(
                    out.quarantine.into_iter().map(|q| q.raw).collect(),
                )),
            });
        }
        // newest first, whatever order upstream used (spec §4.5)
        out.messages.sort_by_key(|m| std::cmp::Reverse(m.seq));
        out.messages.dedup_by(|a, b| {
            a.seq == b.seq && a.observation.message_id == b.observation.message_id
        });
        Ok(out)
    }

    async fn list_before(
        &self,
        chat: &Chat,
        conversation_id: &str,
        anchor: &str,
    ) -> Result<PageRecords, ConnectorError> {
        let request = pb::ListMsgRequest {
            msg_count: PAGE_SIZE,
            msg_id: anchor.to_string(),
            chat_type: chat.chat_type,
            chat_id: chat.id.clone(),
        };
        self.list_page(chat, conversation_id, LIST_MESSAGE, request.encode_to_vec())
            .await
    }

    /// Read the edit record of each message whose `edit_time` is news, and attach the
    /// earlier versions. Rows that cannot be read are quarantined.
    /// Note the messages whose edit record must be read: `edit_time` is news.
    fn want_versions(
        records: &PageRecords,
        known: &dyn Fn(&str) -> Option<u64>,
        wanted: &mut Vec<String>,
    ) {
        for m in &records.messages {
            if m.edit_time > 0 && known(&m.observation.message_id).is_none_or(|t| t < m.edit_time) {
                wanted.push(m.observation.message_id.clone());
            }
        }
    }

    /// Read the edit records of `wanted` a few at a time (the shared client's rate limit
    /// still spaces them) and attach every earlier version. Rows that cannot be read are
    /// quarantined.
    pub(super) async fn attach_versions(
        &self,
        chat: &Chat,
        fetched: &mut Fetched,
        wanted: Vec<String>,
    ) -> Result<(), ConnectorError> {
        use futures::StreamExt;
        let histories: Vec<_> = futures::stream::iter(wanted)
            .map(|id| async move {
                let history = self.edit_history(chat, &id).await;
                (id, history)
            })
            .buffered(EDIT_RECORD_CONCURRENCY)
            .collect()
            .await;
        let index: HashMap<String, usize> = fetched
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| (m.message_id.clone(), i))
            .collect();
        for (id, history) in histories {
            let (versions, bad) = history?;
            if let Some(&i) = index.get(&id) {
                fetched.messages[i].earlier_versions = versions;
            }
            fetched.quarantine.extend(bad);
        }
        Ok(())
    }

    /// Every earlier version of a message, oldest first.
    async fn edit_history(
        &self,
        chat: &Chat,
        msg_id: &str,
    ) -> Result<(Vec<EarlierVersion>, Vec<QuarantineRecord>), ConnectorError> {
        let mut records = Vec::new();
        let mut bad = Vec::new();
        for page in 1..=1000u32 {
            let data = self
                .api
                .post_json(
                    EDIT_RECORD,
                    Some(&chat.id),
                    &self.token,
                    &json!({"msgId": msg_id, "size": EDIT_PAGE_SIZE, "page": page}),
                )
                .await?;
            let rows = match data.get("list") {
                Some(Value::Array(rows)) => rows.clone(),
                None | Some(Value::Null) => Vec::new(),
                Some(_) => {
                    return Err(ConnectorError::Decode {
                        message: format!(
                            "{}: list is not an array",
                            self.api.what(EDIT_RECORD, Some(&chat.id))
                        ),
                        raw: Some(data),
                    })
                }
            };
            for row in &rows {
                match map::edit_record(row) {
                    Ok(r) => records.push(r),
                    Err(reason) => bad.push(QuarantineRecord {
                        reason: format!("yunhu chat {} message {msg_id}: {reason}", chat.id),
                        raw: row.clone(),
                    }),
                }
            }
            let total = data.get("total").and_then(Value::as_u64);
            if rows.len() < EDIT_PAGE_SIZE
                || total.is_some_and(|t| records.len() + bad.len() >= t as usize)
            {
                break;
            }
        }
        records.sort_by_key(|r| (r.edited_ms, r.id));
        Ok((records.into_iter().map(|r| r.version).collect(), bad))
    }

    /// Whether a pass has covered the trailing window after `covered` messages, the oldest
    /// sent at `oldest_ms`.
    fn window_covered(&self, covered: u32, oldest_ms: Option<i64>) -> bool {
        let by_count = covered >= self.rescan_messages;
        let horizon = Utc::now().timestamp_millis() - i64::from(self.rescan_days) * 86_400_000;
        let by_age = self.rescan_days == 0 || oldest_ms.is_some_and(|t| t < horizon);
        by_count && by_age
    }

    pub(super) async fn fetch_messages(
        &self,
        request: &FetchRequest<'_>,
        chat: &Chat,
        wanted: &mut Vec<String>,
    ) -> Result<Fetched, ConnectorError> {
        let conversation_id = request.conversation.conversation_id.as_str();
        let mut cursor = match request.cursor {
            None => None,
            Some(c) => Some(parse_cursor(c, &self.source)?),
        };
        let first_this_run = self.begun().insert(conversation_id.to_string());
        if first_this_run && cursor.as_ref().is_none_or(|c| c.pass.is_none()) {
            let mut c = cursor.take().unwrap_or(HistoryCursor {
                v: CURSOR_VERSION,
                ..HistoryCursor::default()
            });
            c.list_fp = self
                .fingerprints
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(conversation_id)
                .cloned()
                .unwrap_or_default();
            let now = Utc::now().timestamp();
            let window_due = !self.window_disabled()
                && now - c.rescanned_at >= i64::from(self.rescan_every_minutes) * 60;
            if c.newest_seq > 0 && !window_due {
                if let Some(fetched) = self
                    .catch_up_by_seq(chat, conversation_id, &mut c, wanted)
                    .await?
                {
                    return Ok(fetched);
                }
            }
            c.pass = Some(Pass {
                stop_seq: c.newest_seq,
                anchor_seq: i64::MAX,
                window: window_due,
                ..Pass::default()
            });
            cursor = Some(c);
        }
        let Some(mut c) = cursor else {
            // begun this run, and the first page left no cursor: nothing to read
            return Ok(Fetched::empty(
                Cursor(json!(HistoryCursor {
                    v: CURSOR_VERSION,
                    complete: true,
                    ..HistoryCursor::default()
                })),
                true,
            ));
        };
        if c.pass.is_some() {
            return self.pass_page(chat, conversation_id, c, wanted).await;
        }
        if c.complete {
            return Ok(Fetched::empty(Cursor(json!(c)), true));
        }
        // back-fill below the oldest archived message
        let mut records = self
            .list_before(chat, conversation_id, &c.oldest_id)
            .await?;
        records.messages.retain(|m| m.seq < c.oldest_seq);
        Self::want_versions(&records, &|_| None, wanted);
        let mut fetched = Fetched::empty(Cursor(Value::Null), false);
        let mut gaps = Vec::new();
        let mut above = c.oldest_seq;
        for m in &records.messages {
            if m.seq + 1 < above {
                gaps.push((m.seq + 1, above - 1));
            }
            above = m.seq;
        }
        match records.messages.last() {
            Some(lowest) => {
                c.oldest_seq = lowest.seq;
                c.oldest_id = lowest.observation.message_id.clone();
            }
            None => {
                c.complete = true;
                if c.oldest_seq > 1 {
                    fetched.gaps.push(gap(
                        conversation_id,
                        1,
                        c.oldest_seq - 1,
                        BEFORE_HISTORY_REASON,
                    ));
                }
                fetched.done = true;
            }
        }
        fetched.gaps.extend(
            gaps.into_iter()
                .map(|(f, t)| gap(conversation_id, f, t, GAP_REASON)),
        );
        fetched.messages = records
            .messages
            .into_iter()
            .map(|m| m.observation)
            .collect();
        fetched.quarantine = records.quarantine;
        fetched.next_cursor = Cursor(json!(c));
        Ok(fetched)
    }

    /// Catch up with one `list-message-by-seq` call, kept only when contiguous (spec §4.6).
    /// `None`: not contiguous, page from the top instead.
    async fn catch_up_by_seq(
        &self,
        chat: &Chat,
        conversation_id: &str,
        c: &mut HistoryCursor,
        wanted: &mut Vec<String>,
    ) -> Result<Option<Fetched>, ConnectorError> {
        let request = pb::ListMsgBySeqRequest {
            msg_start: c.newest_seq,
            chat_type: chat.chat_type,
            chat_id: chat.id.clone(),
        };
        let mut records = self
            .list_page(
                chat,
                conversation_id,
                LIST_MESSAGE_BY_SEQ,
                request.encode_to_vec(),
            )
            .await?;
        records.messages.retain(|m| m.seq > c.newest_seq);
        let contiguous = records
            .messages
            .last()
            .is_none_or(|lowest| lowest.seq == c.newest_seq + 1)
            && records.quarantine.is_empty();
        if !contiguous {
            return Ok(None);
        }
        Self::want_versions(&records, &|_| None, wanted);
        let mut fetched = Fetched::empty(Cursor(Value::Null), false);
        let mut above = None;
        for m in &records.messages {
            if let Some(above) = above {
                if m.seq + 1 < above {
                    fetched
                        .gaps
                        .push(gap(conversation_id, m.seq + 1, above - 1, GAP_REASON));
                }
            }
            above = Some(m.seq);
        }
        if let Some(top) = records.messages.first() {
            c.newest_seq = top.seq;
            c.newest_id = top.observation.message_id.clone();
        }
        fetched.messages = records
            .messages
            .into_iter()
            .map(|m| m.observation)
            .collect();
        fetched.done = c.complete;
        fetched.next_cursor = Cursor(json!(c));
        Ok(Some(fetched))
    }

    /// One page of a pass from the top.
    async fn pass_page(
        &self,
        chat: &Chat,
        conversation_id: &str,
        mut c: HistoryCursor,
        wanted: &mut Vec<String>,
    ) -> Result<Fetched, ConnectorError> {
        let mut pass = c.pass.take().unwrap_or_default();
        let mut records = self
            .list_before(chat, conversation_id, &pass.anchor_id)
            .await?;
        records.messages.retain(|m| m.seq < pass.anchor_seq);
        let previous = &c.edits;
        let seen = &pass.edits;
        Self::want_versions(
            &records,
            &|id| previous.get(id).or_else(|| seen.get(id)).copied(),
            wanted,
        );
        let mut fetched = Fetched::empty(Cursor(Value::Null), false);
        let mut above = (pass.anchor_seq != i64::MAX).then_some(pass.anchor_seq);
        for m in &records.messages {
            if let Some(above) = above {
                if m.seq + 1 < above {
                    fetched
                        .gaps
                        .push(gap(conversation_id, m.seq + 1, above - 1, GAP_REASON));
                }
            }
            above = Some(m.seq);
            if m.edit_time > 0 {
                pass.edits
                    .insert(m.observation.message_id.clone(), m.edit_time);
            }
        }
        if pass.top_id.is_empty() {
            if let Some(top) = records.messages.first() {
                pass.top_seq = top.seq;
                pass.top_id = top.observation.message_id.clone();
            }
        }
        pass.covered += records.messages.len() as u32;
        let bottom = records.messages.last().map(|m| {
            (
                m.seq,
                m.observation.message_id.clone(),
                m.observation
                    .header
                    .as_ref()
                    .map(|h| h.sent_at.timestamp_millis()),
            )
        });
        let ended_at_bottom = bottom.is_none();
        let finished = match &bottom {
            None => true,
            Some((seq, id, sent_ms)) => {
                pass.anchor_seq = *seq;
                pass.anchor_id = id.clone();
                let caught_up = pass.stop_seq > 0 && *seq <= pass.stop_seq + 1;
                caught_up && (!pass.window || self.window_covered(pass.covered, *sent_ms))
            }
        };
        if finished {
            if pass.window {
                c.rescanned_at = Utc::now().timestamp();
            }
            if pass.top_seq > c.newest_seq {
                c.newest_seq = pass.top_seq;
                c.newest_id = pass.top_id.clone();
            }
            if pass.anchor_seq != i64::MAX && (c.oldest_seq == 0 || pass.anchor_seq < c.oldest_seq)
            {
                c.oldest_seq = pass.anchor_seq;
                c.oldest_id = pass.anchor_id.clone();
            }
            if ended_at_bottom {
                c.complete = true;
                if c.oldest_seq > 1 {
                    fetched.gaps.push(gap(
                        conversation_id,
                        1,
                        c.oldest_seq - 1,
                        BEFORE_HISTORY_REASON,
                    ));
                }
            }
            c.edits = std::mem::take(&mut pass.edits);
            fetched.done = c.complete;
        } else {
            c.pass = Some(pass);
        }
        fetched.messages = records
            .messages
            .into_iter()
            .map(|m| m.observation)
            .collect();
        fetched.quarantine = records.quarantine;
        fetched.next_cursor = Cursor(json!(c));
        Ok(fetched)
    }
}

/// A request body already encoded.
struct RawRequest(Vec<u8>);

impl Message for RawRequest {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0);
    }
    fn merge_field(
        &mut self,
        _tag: u32,
        _wire_type: prost::encoding::WireType,
        _buf: &mut impl prost::bytes::Buf,
        _ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        Err(prost::DecodeError::new("a raw request is never decoded"))
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}

impl fmt::Debug for RawRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawRequest({} bytes)", self.0.len())
    }
}

#[derive(Default)]
struct PageRecords {
    messages: Vec<map::Mapped>,
    quarantine: Vec<QuarantineRecord>,
}

fn gap(conversation_id: &str, from: i64, to: i64, reason: &str) -> SeqGap {
    SeqGap {
        conversation_id: conversation_id.to_string(),
        from_seq: from,
        to_seq: to,
        reason: reason.to_string(),
    }
}
