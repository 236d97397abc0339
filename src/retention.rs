//! Retention periods and which one applies to a message (README, "Retention and legal hold").
//!
//! A period is written `90d`, `12w`, `18m` or `7y` (days, weeks, calendar months, calendar
//! years), or `forever`. The time that counts is a message's `sent_at`: a message is past
//! retention when `sent_at < now - period`. Which period applies to a message, first match
//! wins:
//!
//! 1. its source's `retention` (`[[source]] retention = "5y"`),
//! 2. `[retention.conversation_type]` for its conversation's type (`group = "3y"`),
//! 3. `[retention] default`,
//! 4. otherwise the message is kept forever.
//!
//! This module is pure: it turns the configuration and a clock reading into
//! [`PurgeRule`]s; the store applies them ([`crate::store::Store::purge_batch`]) and never
//! removes a message under an active hold.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Duration, Months, Utc};

use crate::model::ConversationType;

/// A retention period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Days(u32),
    Weeks(u32),
    Months(u32),
    Years(u32),
}

/// The longest period accepted, per unit (a thousand years): bounds the arithmetic.
const MAX_DAYS: u32 = 365_250;
const MAX_WEEKS: u32 = 52_200;
const MAX_MONTHS: u32 = 12_000;
const MAX_YEARS: u32 = 1_000;

/// `Some(period)`, or `None` for `forever`.
pub type Retention = Option<Period>;

/// Parse `90d`, `12w`, `18m`, `7y` or `forever`. The error says what is accepted.
pub fn parse(text: &str) -> Result<Retention, String> {
    let s = text.trim();
    if s.eq_ignore_ascii_case("forever") {
        return Ok(None);
    }
    let hint = "write a number and a unit: 90d (days), 12w (weeks), 18m (months), 7y (years), or \"forever\"";
    let Some(unit) = s.chars().last() else {
        return Err(format!("empty retention period: {hint}"));
    };
    let number = &s[..s.len() - unit.len_utf8()];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid retention period {text:?}: {hint}"));
    }
    let n: u32 = number
        .parse()
        .map_err(|_| format!("retention period {text:?} is too long (at most 1000y)"))?;
    if n == 0 {
        return Err(format!(
            "retention period {text:?} would purge everything at once: give a positive period, or \"forever\""
        ));
    }
    let (period, max) = match unit.to_ascii_lowercase() {
        'd' => (Period::Days(n), MAX_DAYS),
        'w' => (Period::Weeks(n), MAX_WEEKS),
        'm' => (Period::Months(n), MAX_MONTHS),
        'y' => (Period::Years(n), MAX_YEARS),
        _ => return Err(format!("invalid retention period {text:?}: {hint}")),
    };
    if n > max {
        return Err(format!(
            "retention period {text:?} is too long (at most 1000y)"
        ));
    }
    Ok(Some(period))
}

impl Period {
    /// The cut-off at `now`: messages sent before it are past retention.
    pub fn cutoff(self, now: DateTime<Utc>) -> DateTime<Utc> {
        let earlier = match self {
            Period::Days(n) => now.checked_sub_signed(Duration::days(i64::from(n))),
            Period::Weeks(n) => now.checked_sub_signed(Duration::weeks(i64::from(n))),
            Period::Months(n) => now.checked_sub_months(Months::new(n)),
            Period::Years(n) => now.checked_sub_months(Months::new(n.saturating_mul(12))),
        };
        earlier.unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Days(n) => write!(f, "{n}d"),
            Period::Weeks(n) => write!(f, "{n}w"),
            Period::Months(n) => write!(f, "{n}m"),
            Period::Years(n) => write!(f, "{n}y"),
        }
    }
}

/// `[retention]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetentionConfig {
    /// `default`: the period of every message no other rule covers; `None` = forever.
    pub default: Retention,
    /// `[retention.conversation_type]`: per conversation type (`direct`, `group`, `bot`,
    /// `other`).
    pub conversation_type: BTreeMap<String, Retention>,
    /// Each source's own `retention` (`[[source]] retention = "5y"`), by source name.
    pub sources: BTreeMap<String, Retention>,
    /// `auto_purge`: the daemon purges once a day (otherwise only `chatvault purge` does).
    pub auto_purge: bool,
}

/// The conversation types a rule can name.
pub const CONVERSATION_TYPES: [ConversationType; 4] = [
    ConversationType::Direct,
    ConversationType::Group,
    ConversationType::Bot,
    ConversationType::Other,
];

/// One rule of a purge: in `source`, messages of conversations of `conversation_types` sent
/// before `cutoff` are past retention.
#[derive(Clone, Debug, PartialEq)]
pub struct PurgeRule {
    pub source: String,
    pub conversation_types: Vec<String>,
    pub period: Period,
    /// Where the period comes from, as the configuration spells it
    /// (`retention.conversation_type.group = "3y"`).
    pub rule: String,
    pub cutoff: DateTime<Utc>,
}

impl RetentionConfig {
    /// The period of a message of `source` in a conversation of type `conversation_type`,
    /// with where it comes from. `None`: kept forever.
    pub fn period_for(
        &self,
        source: &str,
        conversation_type: ConversationType,
    ) -> (Retention, String) {
        let show = |r: &Retention| r.map_or("forever".to_string(), |p| p.to_string());
        if let Some(r) = self.sources.get(source).copied() {
            return (
                r,
                format!("source \"{source}\".retention = \"{}\"", show(&r)),
            );
        }
        if let Some(r) = self.conversation_type.get(conversation_type.as_str()) {
            return (
                *r,
                format!(
                    "retention.conversation_type.{} = \"{}\"",
                    conversation_type.as_str(),
                    show(r)
                ),
            );
        }
        match self.default {
            Some(p) => (Some(p), format!("retention.default = \"{p}\"")),
            None => (None, "no retention configured".to_string()),
        }
    }

    /// The rules of a purge of `source` at `now`: one per distinct period, covering the
    /// conversation types it applies to. Types kept forever have no rule.
    pub fn rules(&self, source: &str, now: DateTime<Utc>) -> Vec<PurgeRule> {
        let mut rules: Vec<PurgeRule> = Vec::new();
        for ty in CONVERSATION_TYPES {
            let (retention, rule) = self.period_for(source, ty);
            let Some(period) = retention else { continue };
            match rules.iter_mut().find(|r| r.rule == rule) {
                Some(r) => r.conversation_types.push(ty.as_str().to_string()),
                None => rules.push(PurgeRule {
                    source: source.to_string(),
                    conversation_types: vec![ty.as_str().to_string()],
                    period,
                    rule,
                    cutoff: crate::model::to_micros(period.cutoff(now)),
                }),
            }
        }
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!(parse("90d"), Ok(Some(Period::Days(90))));
        assert_eq!(parse("12w"), Ok(Some(Period::Weeks(12))));
        assert_eq!(parse("18m"), Ok(Some(Period::Months(18))));
        assert_eq!(parse(" 7Y "), Ok(Some(Period::Years(7))));
        assert_eq!(parse("forever"), Ok(None));
        for bad in [
            "",
            "7",
            "y",
            "7 years",
            "-1d",
            "1.5y",
            "7x",
            "0d",
            "1001y",
            "99999999999d",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.contains("90d") || err.contains("1000y") || err.contains("positive"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn cutoffs_use_calendar_months_and_years() {
        let now = DateTime::parse_from_rfc3339("2026-03-31T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(Period::Days(90).cutoff(now), at("2025-12-31T12:00:00Z"));
        assert_eq!(Period::Weeks(1).cutoff(now), at("2026-03-24T12:00:00Z"));
        // 31 March minus one month is the last day of February
        assert_eq!(Period::Months(1).cutoff(now), at("2026-02-28T12:00:00Z"));
        assert_eq!(Period::Years(7).cutoff(now), at("2019-03-31T12:00:00Z"));
        assert!(Period::Years(1000).cutoff(now) < at("1100-01-01T00:00:00Z"));
    }

    #[test]
    fn the_source_rule_wins_then_the_type_then_the_default() {
        let config = RetentionConfig {
            default: Some(Period::Years(7)),
            conversation_type: BTreeMap::from([
                ("group".to_string(), Some(Period::Years(3))),
                ("bot".to_string(), None),
            ]),
            sources: BTreeMap::from([
                ("b".to_string(), Some(Period::Months(18))),
                ("c".to_string(), None),
            ]),
            auto_purge: false,
        };
        let (r, why) = config.period_for("a", ConversationType::Group);
        assert_eq!(
            (r, why.as_str()),
            (
                Some(Period::Years(3)),
                "retention.conversation_type.group = \"3y\""
            )
        );
        let (r, why) = config.period_for("a", ConversationType::Direct);
        assert_eq!(
            (r, why.as_str()),
            (Some(Period::Years(7)), "retention.default = \"7y\"")
        );
        assert_eq!(config.period_for("a", ConversationType::Bot).0, None);
        let (r, why) = config.period_for("b", ConversationType::Group);
        assert_eq!(
            (r, why.as_str()),
            (Some(Period::Months(18)), "source \"b\".retention = \"18m\"")
        );
        assert_eq!(config.period_for("c", ConversationType::Direct).0, None);
        assert_eq!(
            RetentionConfig::default()
                .period_for("a", ConversationType::Group)
                .0,
            None
        );

        let now = Utc::now();
        assert!(config.rules("c", now).is_empty());
        assert_eq!(config.rules("b", now).len(), 1);
        let rules = config.rules("a", now);
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!(rules[0].conversation_types, ["direct", "other"]);
        assert_eq!(
            rules[0].cutoff,
            crate::model::to_micros(Period::Years(7).cutoff(now))
        );
        assert_eq!(rules[1].conversation_types, ["group"]);
        assert!(RetentionConfig::default().rules("a", now).is_empty());
    }
}
