//! The run's memory of its window reads: per page, the token it was asked with, the token
//! it returned and the messages it held. Decisions that need a whole read (which messages
//! are absent upstream, which are no-sense) are taken only when the memory holds every
//! page of that read, each chained to the next by its token; a page fetched again (the
//! engine retries a request, or prefetches one whose predecessor then fails) replaces what
//! was remembered from that page on, so the same request with the same cursor always
//! leaves the same memory behind.
//!
//! The memory also tells a page token that comes back within one read (A, B, A, B…) and
//! pages that bring nothing new, so a read that goes round in circles ends with an error.

use std::collections::{BTreeMap, HashMap};

use super::read::Phase;

/// One page of a window read.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct PageMemo {
    /// The `page_token` the page was asked with (`None` for the first page).
    pub token: Option<String>,
    /// The `next_token` it returned, when `has_more` was true.
    pub next: Option<String>,
    /// `(message_server_id, create_time)` of its items.
    pub items: Vec<(String, i64)>,
    /// An item without a usable id or time: no whole-read decision for this read.
    pub broken: bool,
}

/// What recording a page found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Recorded {
    /// The page holds a message no earlier page of this read held.
    pub any_new: bool,
    /// Its `next_token` was already used to ask for a page of this read.
    pub repeated: bool,
}

/// One window read.
#[derive(Debug, Default)]
pub(super) struct ReadMemo {
    pages: BTreeMap<u32, PageMemo>,
    /// Request token → the page asked with it.
    tokens: HashMap<String, u32>,
    /// Message id → the first page that held it.
    first: HashMap<String, u32>,
}

impl ReadMemo {
    /// Remember page `k` (0-based), forgetting whatever was remembered from page `k` on.
    pub fn record(&mut self, k: u32, page: PageMemo) -> Recorded {
        if self.pages.range(k..).next().is_some() {
            self.pages.split_off(&k);
            self.tokens.retain(|_, p| *p < k);
            self.first.retain(|_, p| *p < k);
        }
        if let Some(t) = &page.token {
            self.tokens.entry(t.clone()).or_insert(k);
        }
        let repeated = page
            .next
            .as_ref()
            .is_some_and(|n| self.tokens.contains_key(n));
        let mut any_new = false;
        for (id, _) in &page.items {
            if !self.first.contains_key(id) {
                self.first.insert(id.clone(), k);
                any_new = true;
            }
        }
        self.pages.insert(k, page);
        Recorded { any_new, repeated }
    }

    /// Whether pages `0..n` are all remembered, none broken, the first asked without a
    /// token and each next one with the token its predecessor returned.
    pub fn complete(&self, n: u32) -> bool {
        if n == 0 || self.pages.len() != n as usize {
            return false;
        }
        let mut expected: Option<&String> = None;
        for (i, (k, p)) in self.pages.iter().enumerate() {
            if *k as usize != i || p.broken || p.token.as_ref() != expected {
                return false;
            }
            expected = p.next.as_ref();
        }
        true
    }

    /// Every item of every remembered page.
    pub fn items(&self) -> impl Iterator<Item = &(String, i64)> {
        self.pages.values().flat_map(|p| p.items.iter())
    }
}

/// The memory of one conversation's reads, for one plan of the run.
#[derive(Debug, Default)]
pub(super) struct ConvMemo {
    plan: u64,
    reads: HashMap<(Phase, i64, i64), ReadMemo>,
}

impl ConvMemo {
    /// The memory of one read of plan `plan`; a new plan forgets the old one.
    pub fn read(&mut self, plan: u64, key: (Phase, i64, i64)) -> &mut ReadMemo {
        if self.plan != plan {
            self.plan = plan;
            self.reads.clear();
        }
        self.reads.entry(key).or_default()
    }

    /// The read of `phase` in plan `plan` (`All` and `Sense` happen once per plan).
    pub fn find(&self, plan: u64, phase: Phase) -> Option<&ReadMemo> {
        if self.plan != plan {
            return None;
        }
        self.reads
            .iter()
            .find(|((p, _, _), _)| *p == phase)
            .map(|(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(token: Option<&str>, next: Option<&str>, ids: &[&str]) -> PageMemo {
        PageMemo {
            token: token.map(str::to_string),
            next: next.map(str::to_string),
            items: ids.iter().map(|i| (i.to_string(), 1)).collect(),
            broken: false,
        }
    }

    #[test]
    fn a_chain_of_pages_is_complete_and_a_hole_is_not() {
        let mut m = ReadMemo::default();
        m.record(0, page(None, Some("A"), &["1", "2"]));
        m.record(1, page(Some("A"), Some("B"), &["3"]));
        m.record(2, page(Some("B"), None, &["4"]));
        assert!(m.complete(3));
        assert!(!m.complete(2) && !m.complete(4));
        assert_eq!(m.items().count(), 4);
        let mut holed = ReadMemo::default();
        holed.record(0, page(None, Some("A"), &["1"]));
        holed.record(2, page(Some("B"), None, &["4"]));
        assert!(!holed.complete(2) && !holed.complete(3));
        let mut broken = ReadMemo::default();
        let mut p = page(None, None, &["1"]);
        p.broken = true;
        broken.record(0, p);
        assert!(!broken.complete(1));
        // a token that does not chain
        let mut unchained = ReadMemo::default();
        unchained.record(0, page(None, Some("A"), &["1"]));
        unchained.record(1, page(Some("X"), None, &["2"]));
        assert!(!unchained.complete(2));
    }

    #[test]
    fn refetching_a_page_replaces_what_followed_it() {
        let mut m = ReadMemo::default();
        m.record(0, page(None, Some("A"), &["1"]));
        m.record(1, page(Some("A"), Some("B"), &["2"]));
        m.record(2, page(Some("B"), Some("C"), &["3"]));
        // page 1 again (a retry after a failed write), now answering differently
        let r = m.record(1, page(Some("A"), Some("B2"), &["2", "5"]));
        assert_eq!(
            r,
            Recorded {
                any_new: true,
                repeated: false
            }
        );
        assert!(!m.complete(3));
        m.record(2, page(Some("B2"), None, &["3"]));
        assert!(m.complete(3));
        // the same page recorded twice gives the same answer
        let again = m.record(2, page(Some("B2"), None, &["3"]));
        assert_eq!(
            again,
            Recorded {
                any_new: true,
                repeated: false
            }
        );
    }

    #[test]
    fn a_token_that_comes_back_is_seen_however_long_the_cycle() {
        let mut m = ReadMemo::default();
        assert!(!m.record(0, page(None, Some("A"), &["1"])).repeated);
        assert!(!m.record(1, page(Some("A"), Some("B"), &["2"])).repeated);
        let r = m.record(2, page(Some("B"), Some("A"), &["1"]));
        assert!(r.repeated && !r.any_new);
        let mut same = ReadMemo::default();
        same.record(0, page(None, Some("A"), &[]));
        assert!(same.record(1, page(Some("A"), Some("A"), &[])).repeated);
    }

    #[test]
    fn a_new_plan_forgets_the_old_one() {
        let mut c = ConvMemo::default();
        c.read(1, (Phase::All, 0, 9))
            .record(0, page(None, None, &["1"]));
        assert!(c.find(1, Phase::All).is_some_and(|r| r.complete(1)));
        assert!(c.find(2, Phase::All).is_none());
        c.read(2, (Phase::Sense, 0, 9));
        assert!(c.find(2, Phase::All).is_none());
    }
}
