//! Charts drawn on the server as inline SVG: no script, nothing loaded, no `style` attribute
//! (presentation attributes only), so the pages' Content-Security-Policy is unchanged. Each
//! chart scales to its container (`viewBox`, `width="100%"`), so it reads on a phone, and is
//! an image to assistive technology (`role="img"`, a `<title>` and an `aria-label` that say the
//! numbers). Every element is closed, so the SVG is well-formed XML.

use maud::{html, Markup};

use crate::store::charts::{DayCount, RunDuration};

/// The drawing's size in its own units (the browser scales it).
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 140.0;
/// Room for the axis labels.
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 18.0;
const TOP: f64 = 8.0;

const BAR: &str = "#4a78c2";
const AXIS: &str = "#888888";
const OK: &str = "#3f8f4f";
const FAILED: &str = "#c0392b";
const OTHER: &str = "#b7950b";

/// A tidy upper bound of the scale for `max` (1, 2 or 5 times a power of ten).
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if max <= step * magnitude {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// `x` with at most one decimal and no trailing zero, for coordinates and labels.
fn n(x: f64) -> String {
    let s = format!("{x:.1}");
    s.strip_suffix(".0").unwrap_or(&s).to_string()
}

/// The frame both charts share: the SVG element, its title, the y axis with its top value.
fn frame(title: &str, summary: &str, top_label: &str, body: Markup) -> Markup {
    let plot_bottom = HEIGHT - BOTTOM;
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" role="img" width="100%"
            viewBox={ "0 0 " (n(WIDTH)) " " (n(HEIGHT)) } preserveAspectRatio="xMidYMid meet"
            aria-label={ (title) ": " (summary) } {
            title { (title) ": " (summary) }
            line x1=(n(LEFT)) y1=(n(TOP)) x2=(n(LEFT)) y2=(n(plot_bottom)) stroke=(AXIS) stroke-width="1" {}
            line x1=(n(LEFT)) y1=(n(plot_bottom)) x2=(n(WIDTH)) y2=(n(plot_bottom)) stroke=(AXIS) stroke-width="1" {}
            text x=(n(LEFT - 4.0)) y=(n(TOP + 8.0)) text-anchor="end" font-size="10" fill=(AXIS) { (top_label) }
            text x=(n(LEFT - 4.0)) y=(n(plot_bottom)) text-anchor="end" font-size="10" fill=(AXIS) { "0" }
            (body)
        }
    }
}

/// Messages per day: one bar per day (a day without messages has a bar of height 0), the
/// first and last day under the axis.
pub fn messages_per_day(title: &str, days: &[DayCount]) -> Markup {
    let total: i64 = days.iter().map(|d| d.messages).sum();
    let busiest = days
        .iter()
        .max_by_key(|d| (d.messages, std::cmp::Reverse(d.day)));
    let summary = match (days.first(), days.last(), busiest) {
        (Some(first), Some(last), Some(b)) if total > 0 => format!(
            "{total} messages over {} days from {} to {}, most on {} ({})",
            days.len(),
            first.day,
            last.day,
            b.day,
            b.messages
        ),
        (Some(first), Some(last), _) => format!(
            "no messages over {} days from {} to {}",
            days.len(),
            first.day,
            last.day
        ),
        _ => "no data".to_string(),
    };
    let top = nice_max(busiest.map_or(0, |b| b.messages) as f64);
    let plot_height = HEIGHT - BOTTOM - TOP;
    let slot = (WIDTH - LEFT) / days.len().max(1) as f64;
    let bar_width = (slot * 0.8).max(0.5);
    let body = html! {
        @for (i, d) in days.iter().enumerate() {
            @let h = d.messages as f64 / top * plot_height;
            rect.bar x=(n(LEFT + i as f64 * slot + (slot - bar_width) / 2.0)) y=(n(HEIGHT - BOTTOM - h))
                width=(n(bar_width)) height=(n(h)) fill=(BAR) {
                title { (d.day) ": " (d.messages) " messages" }
            }
        }
        @if let (Some(first), Some(last)) = (days.first(), days.last()) {
            text x=(n(LEFT)) y=(n(HEIGHT - 4.0)) font-size="10" fill=(AXIS) { (first.day) }
            text x=(n(WIDTH)) y=(n(HEIGHT - 4.0)) text-anchor="end" font-size="10" fill=(AXIS) { (last.day) }
        }
    };
    frame(title, &summary, &n(top), body)
}

/// Run durations, oldest run first: a line through one point per run, coloured by how the
/// run ended (green ok, red failed, amber interrupted).
pub fn run_durations(title: &str, runs: &[RunDuration]) -> Markup {
    let longest = runs.iter().map(|r| r.seconds).fold(0.0, f64::max);
    let failed = runs.iter().filter(|r| r.status == "failed").count();
    let summary = if runs.is_empty() {
        "no finished runs yet".to_string()
    } else {
        let mut sorted: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
        sorted.sort_by(f64::total_cmp);
        format!(
            "last {} runs, median {} s, longest {} s, {failed} failed",
            runs.len(),
            n(sorted[sorted.len() / 2]),
            n(longest)
        )
    };
    let top = nice_max(longest);
    let plot_height = HEIGHT - BOTTOM - TOP;
    let step = if runs.len() > 1 {
        (WIDTH - LEFT - 8.0) / (runs.len() - 1) as f64
    } else {
        0.0
    };
    let points: Vec<(f64, f64, &RunDuration)> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let x = LEFT + 4.0 + i as f64 * step;
            let y = HEIGHT - BOTTOM - r.seconds.max(0.0) / top * plot_height;
            (x, y, r)
        })
        .collect();
    let line: String = points
        .iter()
        .map(|(x, y, _)| format!("{},{}", n(*x), n(*y)))
        .collect::<Vec<_>>()
        .join(" ");
    let body = html! {
        @if points.len() > 1 {
            polyline points=(line) fill="none" stroke=(BAR) stroke-width="1.5" {}
        }
        @for (x, y, r) in &points {
            @let colour = match r.status.as_str() { "ok" => OK, "failed" => FAILED, _ => OTHER };
            circle.point cx=(n(*x)) cy=(n(*y)) r="2.5" fill=(colour) {
                title { "run " (r.run_id) " at " (r.started_at.format("%Y-%m-%d %H:%M")) ": " (n(r.seconds)) " s, " (r.status) }
            }
        }
        text x=(n(LEFT)) y=(n(HEIGHT - 4.0)) font-size="10" fill=(AXIS) { "older" }
        text x=(n(WIDTH)) y=(n(HEIGHT - 4.0)) text-anchor="end" font-size="10" fill=(AXIS) { "newest run" }
    };
    frame(title, &summary, &format!("{} s", n(top)), body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn the_scale_ends_on_a_round_number() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(12.0), 20.0);
        assert_eq!(nice_max(0.3), 0.5);
        assert_eq!(nice_max(4000.0), 5000.0);
    }

    #[test]
    fn bars_are_one_a_day_and_the_label_says_the_numbers() {
        let day = |d| NaiveDate::from_ymd_opt(2026, 1, d).unwrap();
        let days = [
            DayCount {
                day: day(1),
                messages: 0,
            },
            DayCount {
                day: day(2),
                messages: 8,
            },
            DayCount {
                day: day(3),
                messages: 2,
            },
        ];
        let svg = messages_per_day("Messages per day", &days).into_string();
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 3);
        assert!(svg.contains(
            "aria-label=\"Messages per day: 10 messages over 3 days from 2026-01-01 to 2026-01-03, most on 2026-01-02 (8)\""
        ), "{svg}");
        assert!(!svg.contains("style="), "{svg}");
        assert!(
            svg.contains("height=\"0\""),
            "an empty day is a bar of height 0: {svg}"
        );
    }
}
